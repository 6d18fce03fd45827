"""Architectures as torch.onnx exports them, compiled by ember vs onnxruntime, side by side:
the kinds of models ember is judged on beyond its zoo (speech, text, OCR, detection).

    python tools/bench_exported.py [--threads 1,2] [--blocks 4] [--runs 5] [--models wav2vec2,...] [--write]

Each model is built here from its architecture with seeded random weights (transformers'
Wav2Vec2, Whisper's encoder, T5's encoder, BERT; a CRNN with a 2-layer bidirectional LSTM;
a detector whose graph holds TopK, boolean indexing and NonMaxSuppression; the zoo's ResNet-18
and MobileNetV2 with dynamic image height and width, as backbones are exported), exported by
torch.onnx at opset 17 with dynamic axes, compiled by `ember compile` with the inputs below
as its sample, checked against onnxruntime (max abs difference), then timed like
tools/bench_ops.py: alternating blocks of `--runs` runs, each block in a fresh process,
medians. Needs the zoo extra (torch, transformers). `--write` replaces the table in
BENCHMARKS.md. Random weights: the speed and agreement are what is measured, not accuracy.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

BEGIN, END = "<!-- exported:start -->", "<!-- exported:end -->"


def _export(module: Any, args: tuple, path: Path, names: list[str], axes: dict[str, dict[int, str]]) -> None:
    import torch

    torch.onnx.export(module.eval(), args, str(path), opset_version=17, dynamo=False, input_names=names,
                      dynamic_axes=axes)


def wav2vec2(path: Path) -> dict[str, np.ndarray]:
    """Speech: a Wav2Vec2 encoder (7 strided Conv1d with GroupNorm, a grouped positional conv,
    3 transformer layers) on 4 s of 16 kHz audio."""
    import torch
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    model = Wav2Vec2Model(Wav2Vec2Config(hidden_size=256, num_hidden_layers=3, num_attention_heads=4, intermediate_size=1024,
                                         conv_dim=(256,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=8)).eval()
    _export(_keep(model, lambda m, x: m(x).last_hidden_state), (torch.randn(1, 64000),), path, ["audio"],
            {"audio": {1: "T"}})
    return {"audio": np.random.default_rng(0).standard_normal((1, 64000)).astype(np.float32)}


def whisper(path: Path) -> dict[str, np.ndarray]:
    """Speech: a Whisper encoder (2 Conv1d, 4 transformer layers) on 30 s of 80 mel bins."""
    import torch
    from transformers import WhisperConfig, WhisperModel

    encoder = WhisperModel(WhisperConfig(d_model=256, encoder_layers=4, encoder_attention_heads=4, encoder_ffn_dim=1024,
                                         decoder_attention_heads=4, num_mel_bins=80)).encoder.eval()
    _export(_keep(encoder, lambda m, x: m(x).last_hidden_state), (torch.randn(1, 80, 3000),), path, ["mel"], {})
    return {"mel": np.random.default_rng(0).standard_normal((1, 80, 3000)).astype(np.float32)}


def t5(path: Path) -> dict[str, np.ndarray]:
    """Text: a T5 encoder (relative position buckets, RMS norm, 4 layers) on 128 tokens."""
    import torch
    from transformers import T5Config, T5EncoderModel

    model = T5EncoderModel(T5Config(d_model=384, num_layers=4, num_heads=6, d_ff=1536, d_kv=64)).eval()
    ids = torch.randint(0, 32000, (1, 128))
    _export(_keep(model, lambda m, i, a: m(input_ids=i, attention_mask=a).last_hidden_state), (ids, torch.ones_like(ids)), path,
            ["ids", "mask"], {"ids": {0: "B", 1: "S"}, "mask": {0: "B", 1: "S"}})
    rng = np.random.default_rng(0)
    return {"ids": rng.integers(0, 32000, (1, 128)).astype(np.int64), "mask": np.ones((1, 128), np.int64)}


def bert(path: Path) -> dict[str, np.ndarray]:
    """Text: a BERT encoder (6 layers, 384 wide) on 128 tokens with an attention mask."""
    import torch
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=6, intermediate_size=1536)).eval()
    ids = torch.randint(0, 30000, (1, 128))
    _export(_keep(model, lambda m, i, a: m(input_ids=i, attention_mask=a).last_hidden_state), (ids, torch.ones_like(ids)), path,
            ["ids", "mask"], {"ids": {0: "B", 1: "S"}, "mask": {0: "B", 1: "S"}})
    rng = np.random.default_rng(0)
    return {"ids": rng.integers(0, 30000, (1, 128)).astype(np.int64), "mask": np.ones((1, 128), np.int64)}


def crnn(path: Path) -> dict[str, np.ndarray]:
    """OCR: a CRNN (conv/BN/pool, a 2-layer bidirectional LSTM, log-softmax over 37 symbols)
    on a 32 x 320 text line, dynamic width."""
    import torch
    nn = torch.nn

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cnn = nn.Sequential(nn.Conv2d(1, 64, 3, 1, 1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2, 2),
                                     nn.Conv2d(64, 128, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2, 2),
                                     nn.Conv2d(128, 256, 3, 1, 1), nn.ReLU(), nn.MaxPool2d((2, 1), (2, 1)))
            self.rnn = nn.LSTM(256, 128, num_layers=2, bidirectional=True)
            self.fc = nn.Linear(256, 37)

        def forward(self, x: Any) -> Any:
            y, _ = self.rnn(self.cnn(x).mean(2).permute(2, 0, 1))
            return self.fc(y).log_softmax(-1)

    torch.manual_seed(0)
    _export(CRNN(), (torch.randn(1, 1, 32, 320),), path, ["x"], {"x": {3: "W"}})
    return {"x": np.random.default_rng(0).standard_normal((1, 1, 32, 320)).astype(np.float32)}


def detector(path: Path) -> dict[str, np.ndarray]:
    """Detection: the torch-exported detector of tests/targets/test_exported_detector.py (conv
    backbone, TopK of min(n, 300), boolean indexing, class-aware NMS) on a 320 x 320 image."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "targets"))
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from test_exported_detector import export_detector

    export_detector(path)
    return {"x": (np.random.default_rng(0).standard_normal((1, 3, 320, 320)) * 2).astype(np.float32)}


def _dynamic_image(name: str, path: Path) -> dict[str, np.ndarray]:
    """A zoo CNN with its input's height and width made symbolic, as detection and OCR
    backbones are exported, on a 256 x 320 image (not the 224 x 224 it was traced at)."""
    import onnx

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import zoo

    model = zoo.with_dynamic_image(name)
    onnx.save(model, str(path))
    return {model.graph.input[0].name: np.random.default_rng(0).standard_normal((1, 3, 256, 320)).astype(np.float32)}


def resnet18_dynamic(path: Path) -> dict[str, np.ndarray]:
    """Detection/OCR backbone: the zoo's ResNet-18 with dynamic H, W (section 3 has it static)."""
    return _dynamic_image("resnet18", path)


def mobilenetv2_dynamic(path: Path) -> dict[str, np.ndarray]:
    """Detection/OCR backbone: the zoo's MobileNetV2 with dynamic H, W."""
    return _dynamic_image("mobilenetv2", path)


def _keep(model: Any, call: Callable[..., Any]) -> Any:
    """A module whose forward calls `call(model, *inputs)` (the export's tensor outputs only)."""
    import torch

    class Keep(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *xs: Any) -> Any:
            return call(self.model, *xs)

    return Keep()


MODELS: dict[str, Callable[[Path], dict[str, np.ndarray]]] = {
    "wav2vec2": wav2vec2, "whisper_encoder": whisper, "t5_encoder": t5, "bert": bert, "crnn": crnn, "detector": detector,
    "resnet18_dynamic": resnet18_dynamic, "mobilenetv2_dynamic": mobilenetv2_dynamic,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--write", action="store_true", help="replace the table in BENCHMARKS.md")
    args = parser.parse_args(argv)
    import torch

    from ember.compiler.driver import compile_model

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_ops import COLUMNS, _diff, side_by_side, write_table

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models.split(","):
            path, artifact, inputs = Path(tmp) / f"{name}.onnx", Path(tmp) / f"{name}.ember", Path(tmp) / f"{name}.npz"
            feeds = MODELS[name](path)
            start = time.perf_counter()
            compile_model(path, artifact, sample=feeds)
            compile_s = time.perf_counter() - start
            np.savez(inputs, **feeds)
            for threads in [int(t) for t in args.threads.split(",")]:
                diff = _diff(artifact, path, feeds, threads)
                e, o = side_by_side(artifact, path, inputs, threads, args.blocks, args.runs)
                rows.append(f"| {name} | {threads} | {o:.2f} | {e:.2f} | {e / o:.2f} | {diff} | {compile_s:.1f} |")
                print(rows[-1], flush=True)
    write_table("bench_exported.py", argv, (BEGIN, END),
                "9. Architectures as torch.onnx exports them (speech, text, OCR, detection)",
                ["model", "threads", *COLUMNS], rows, args.blocks * args.runs, args.write)
    return 0


if __name__ == "__main__":
    sys.exit(main())
