"""Does ember compile real architectures as torch.onnx exports them, and agree with onnxruntime?

    python tools/sweep_exports.py [--models gpt2,crnn,...] [--exporter torchscript|dynamo] [--out DIR] [--timeout 900] [--list]

Each model is built here from its architecture with seeded random weights and a small config:
transformers text, speech and vision models, torchvision detection, segmentation and
classification models (rows say "skipped" where torchvision is not importable), and a CRNN and a
DBNet-style text detector in plain torch. It is exported into DIR by torch.onnx (`torchscript`:
dynamo=False, opset 17, dynamic_axes; `dynamo`: dynamo=True, opset 18, the same axes as
dynamic_shapes) with a sample npz and, where dims are dynamic, an `_other` npz at another
batch, sequence or image size. Then, one model at a time, `ember compile M.onnx -o M.ember
--sample M.npz --verify` and `ember verify M.ember M.onnx --inputs M_other.npz`, their output
kept in DIR/M.compile.log and DIR/M.verify.log. One markdown row per model: compiled?, max abs
error vs onnxruntime on the sample, the other-size verify, compile seconds, ember's first error
line. A model agreed when it compiled (which includes --verify on the sample) and the other-size
verify passed. Export failures are torch's and reported as such. Needs the zoo extra (torch,
transformers). Random weights: agreement is what is measured, not accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

EMBER = str(Path(sys.executable).with_name("ember"))
COLUMNS = ["model", "exporter", "compiled", "max abs error vs onnxruntime", "other-size verify", "compile s", "first error"]


@dataclass(frozen=True)
class Case:
    """A model as the exporter sees it: example inputs (also the compile sample), their names, the
    output names, torch.onnx dynamic_axes over both, and inputs at another batch/sequence/image size."""

    module: Any
    inputs: tuple
    names: list[str]
    outputs: list[str]
    axes: dict[str, Any]
    other: tuple


class Skip(Exception):
    """A model that cannot be built here, with the reason for its row."""


def _call(model: Any, fn: Callable[..., Any]) -> Any:
    """A module whose forward(*inputs) is `fn(model, *inputs)` (bench_exported's)."""
    from bench_exported import _keep

    return _keep(model, fn)


def _hf(config: Callable[[Any], Any], model_cls: str) -> Any:
    """transformers' `model_cls` built from `config(transformers)` with seeded random weights and
    eager attention (the plain MatMul/Softmax chain)."""
    import torch
    import transformers

    built = config(transformers)
    built._attn_implementation = "eager"
    torch.manual_seed(0)
    return getattr(transformers, model_cls)(built).eval()


# ---- text and speech (transformers) ----

TEXT = {"vocab_size": 1000, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128,
        "max_position_embeddings": 128}
SEQ2SEQ = {"vocab_size": 1000, "d_model": 64, "encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 4,
           "decoder_attention_heads": 4, "encoder_ffn_dim": 128, "decoder_ffn_dim": 128}
SPEECH = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128, "conv_dim": (32, 32, 32),
          "conv_stride": (5, 2, 2), "conv_kernel": (10, 3, 3), "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4,
          "vocab_size": 32}
IDS_MASK_TYPES = ["input_ids", "attention_mask", "token_type_ids"]
IDS_MASK = IDS_MASK_TYPES[:2]
VIT = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 128}


def _mask(batch: int, length: int, left: int = 0, right: int = 0) -> Any:
    """An int64 attention mask of ones whose row 2 has `left` leading and `right` trailing pads."""
    import torch

    mask = torch.ones(batch, length, dtype=torch.int64)
    mask[1, :left] = mask[1, length - right:] = 0
    return mask


def _past(infix: str) -> tuple[list[str], list[str], dict[str, Any]]:
    """Names and axes of a 2-layer self-attention cache: `past_key_values.{i}{infix}.key` in, `present...` out."""
    kv = [f"{i}{infix}.{t}" for i in range(2) for t in ("key", "value")]
    ins, outs = [f"past_key_values.{n}" for n in kv], [f"present.{n}" for n in kv]
    return ins, outs, {n: {0: "batch", 2: "past"} for n in ins} | {n: {0: "batch", 2: "total"} for n in outs}


def _cache(past: tuple) -> Any:
    """A DynamicCache holding the (key, value, key, value) inputs of 2 layers."""
    from transformers.cache_utils import DynamicCache

    cache = DynamicCache()
    for i in range(2):
        cache.update(past[2 * i], past[2 * i + 1], i)
    return cache


def _presents(cache: Any) -> tuple:
    return tuple(t for layer in cache.layers for t in (layer.keys, layer.values))


def gpt2() -> Case:
    """GPT-2 LM with past key/values: 5 tokens after 7 cached, row 2 left-padded; other: 1 after 12."""
    import torch

    model = _hf(lambda t: t.GPT2Config(vocab_size=1000, n_embd=64, n_layer=2, n_head=4, n_positions=256, use_cache=True), "GPT2LMHeadModel")

    def run(m: Any, ids: Any, mask: Any, *past: Any) -> tuple:
        out = m(input_ids=ids, attention_mask=mask, past_key_values=_cache(past), use_cache=True)
        return (out.logits, *_presents(out.past_key_values))

    def make(batch: int, seq: int, past: int) -> tuple:
        return (torch.randint(0, 1000, (batch, seq)), _mask(batch, past + seq, left=3), *(torch.randn(batch, 4, past, 16) for _ in range(4)))

    past_in, past_out, past_axes = _past("")
    axes = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "total"}, "logits": {0: "batch", 1: "seq"}}
    return Case(_call(model, run), make(2, 5, 7), ["input_ids", "attention_mask", *past_in], ["logits", *past_out],
                axes | past_axes, make(2, 1, 12))


def _causal_lm(arch: str, **extra: Any) -> Case:
    """A 2-layer grouped-query decoder LM without cache on a left-padded batch of 2 (9 tokens; other 17)
    (`extra`: more of its config; a config without grouped queries keeps num_key_value_heads as an
    unused attribute)."""
    import torch

    extra = ({"sliding_window": None} if arch == "Mistral" else {}) | extra
    model = _hf(lambda t: getattr(t, f"{arch}Config")(**TEXT | {"max_position_embeddings": 256, "num_key_value_heads": 2}
                                                       | extra, use_cache=False), f"{arch}ForCausalLM")

    def make(batch: int, seq: int) -> tuple:
        return torch.randint(0, 1000, (batch, seq)), _mask(batch, seq, left=3)

    names = ["input_ids", "attention_mask"]
    return Case(_call(model, lambda m, i, a: m(input_ids=i, attention_mask=a, use_cache=False).logits), make(2, 9), names,
                ["logits"], {n: {0: "batch", 1: "seq"} for n in [*names, "logits"]}, make(2, 17))


def _encoder(config: Callable[[Any], Any], model_cls: str, names: list[str] = IDS_MASK_TYPES, axes: dict[str, Any] | None = None,
             pad_id: int = 0) -> Case:
    """A BERT-like encoder on a batch of 2 whose row 2 ends in 3 pads (11 tokens; other 24), fed
    the first len(names) of input_ids, attention_mask, token_type_ids; by default every input and
    the output `out` have dynamic batch and sequence."""
    import torch

    model = _hf(config, model_cls)
    keys = ("input_ids", "attention_mask", "token_type_ids")

    def make(batch: int, seq: int) -> tuple:
        ids, types = torch.randint(3, 1000, (batch, seq)), torch.zeros(batch, seq, dtype=torch.int64)
        ids[1, -3:], types[:, seq // 2:] = pad_id, 1
        return (ids, _mask(batch, seq, right=3), types)[:len(names)]

    axes = axes or {n: {0: "batch", 1: "seq"} for n in [*names, "out"]}
    return Case(_call(model, lambda m, *xs: m(**dict(zip(keys, xs)))[0]), make(2, 11), names, ["out"], axes, make(2, 24))


def _seq2seq(config: Callable[[Any], Any], model_cls: str) -> Case:
    """A full encoder-decoder LM, both sides padded in row 2: 13 source, 6 target tokens; other 7, 19."""
    import torch

    model = _hf(config, model_cls)
    names = ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"]

    def make(batch: int, src: int, tgt: int) -> tuple:
        return torch.randint(3, 1000, (batch, src)), _mask(batch, src, right=4), torch.randint(3, 1000, (batch, tgt)), _mask(batch, tgt, right=2)

    axes = {n: {0: "batch", 1: "src" if i < 2 else "tgt"} for i, n in enumerate(names)} | {"logits": {0: "batch", 1: "tgt"}}
    return Case(_call(model, lambda m, *xs: m(**dict(zip(names, xs)), use_cache=False).logits), make(2, 13, 6), names,
                ["logits"], axes, make(2, 7, 19))


def whisper_decoder() -> Case:
    """Whisper's decoder with past self-attention keys/values and encoder states: 2 tokens after 6
    cached, 32 encoder frames; other: 1 token after 9, 17 frames."""
    import torch
    from transformers.cache_utils import DynamicCache, EncoderDecoderCache

    model = _hf(lambda t: t.WhisperConfig(**SEQ2SEQ, num_mel_bins=16, max_source_positions=32, max_target_positions=64, pad_token_id=0,
                                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1), "WhisperForConditionalGeneration")

    def run(m: Any, ids: Any, states: Any, *past: Any) -> tuple:
        cache = EncoderDecoderCache(_cache(past), DynamicCache())
        out = m.model.decoder(input_ids=ids, encoder_hidden_states=states, past_key_values=cache, use_cache=True)
        return (m.proj_out(out.last_hidden_state), *_presents(out.past_key_values.self_attention_cache))

    def make(batch: int, seq: int, frames: int, past: int) -> tuple:
        return (torch.randint(3, 1000, (batch, seq)), torch.randn(batch, frames, 64), *(torch.randn(batch, 4, past, 16) for _ in range(4)))

    past_in, past_out, past_axes = _past(".decoder")
    axes = {"decoder_input_ids": {0: "batch", 1: "seq"}, "encoder_hidden_states": {0: "batch", 1: "frames"}, "logits": {0: "batch", 1: "seq"}}
    return Case(_call(model, run), make(2, 2, 32, 6), ["decoder_input_ids", "encoder_hidden_states", *past_in],
                ["logits", *past_out], axes | past_axes, make(2, 1, 17, 9))


def _speech(config: Callable[[Any], Any], model_cls: str, masked: bool) -> Case:
    """A wav2vec2-family encoder on 2 clips of 0.1 s at 16 kHz (other 0.17 s), row 2's last quarter
    zeroed and, where `masked`, masked out."""
    import torch

    model = _hf(config, model_cls)
    names = ["input_values", "attention_mask"][:1 + masked]

    def make(batch: int, samples: int) -> tuple:
        x = torch.randn(batch, samples)
        x[1, -samples // 4:] = 0
        return (x, _mask(batch, samples, right=samples // 4))[:len(names)]

    axes = {n: {0: "batch", 1: "samples"} for n in names} | {"out": {0: "batch", 1: "frames"}}
    return Case(_call(model, lambda m, *xs: m(*xs)[0]), make(2, 1600), names, ["out"], axes, make(2, 2720))


def whisper_encoder() -> Case:
    """Whisper's encoder on 2 clips of 16 mel bins x 64 frames (other: 3; its frame count is fixed
    at twice max_source_positions)."""
    import torch

    model = _hf(lambda t: t.WhisperConfig(**SEQ2SEQ, num_mel_bins=16, max_source_positions=32, max_target_positions=64, pad_token_id=0,
                                          bos_token_id=1, eos_token_id=2, decoder_start_token_id=1), "WhisperForConditionalGeneration")
    return Case(_call(model.model.encoder, lambda m, x: m(input_features=x).last_hidden_state), (torch.randn(2, 16, 64),),
                ["input_features"], ["last_hidden_state"], {"input_features": {0: "batch"}, "last_hidden_state": {0: "batch"}},
                (torch.randn(3, 16, 64),))


# ---- vision ----

def _images(batch: int, height: int, width: int, channels: int = 3) -> Any:
    import torch

    return torch.rand(batch, channels, height, width)


def _image(model_cls: str, config: Callable[[Any], Any], outputs: list[str], size: int, other: tuple[int, int] | None = None,
           out_axes: dict[str, Any] | None = None) -> Case:
    """A transformers vision model on 2 images of size x size, dynamic batch; with `other` (H, W) also
    dynamic height and width, the other-size sample being 3 images of H x W (else of size x size)."""
    model = _hf(config, model_cls)
    axes = {"pixel_values": {0: "batch"} | ({2: "height", 3: "width"} if other else {})}
    axes |= {n: (out_axes or {}).get(n, {0: "batch"}) for n in outputs}
    return Case(_call(model, lambda m, x: tuple(m(pixel_values=x)[n] for n in outputs)), (_images(2, size, size),),
                ["pixel_values"], outputs, axes, (_images(3, *(other or (size, size))),))


def _detr_config(t: Any) -> Any:
    backbone = t.ResNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], layer_type="basic",
                              out_features=["stage4"])
    return t.DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=64, encoder_layers=2,
                        decoder_layers=2, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                        num_queries=20, num_labels=10)


def _trocr(part: str) -> Case:
    """TrOCR (ViT encoder, TrOCR decoder): the encoder on 2 64 x 64 crops (other 3), or the decoder on
    7 tokens and 17 encoder states (other 3 x 12 tokens)."""
    import torch

    def config(t: Any) -> Any:
        encoder = t.ViTConfig(image_size=64, patch_size=16, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        decoder = t.TrOCRConfig(vocab_size=100, d_model=64, decoder_layers=2, decoder_attention_heads=4, decoder_ffn_dim=128,
                                max_position_embeddings=64, cross_attention_hidden_size=64, decoder_start_token_id=2, pad_token_id=1,
                                bos_token_id=0, eos_token_id=2)
        return t.VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)

    model = _hf(config, "VisionEncoderDecoderModel")
    if part == "encoder":
        return Case(_call(model.encoder, lambda m, x: m(pixel_values=x).last_hidden_state), (_images(2, 64, 64),), ["pixel_values"],
                    ["last_hidden_state"], {"pixel_values": {0: "batch"}, "last_hidden_state": {0: "batch"}}, (_images(3, 64, 64),))
    axes = {"input_ids": {0: "batch", 1: "seq"}, "encoder_hidden_states": {0: "batch"}, "logits": {0: "batch", 1: "seq"}}
    return Case(_call(model.decoder, lambda m, i, s: m(input_ids=i, encoder_hidden_states=s, use_cache=False).logits),
                (torch.randint(0, 100, (2, 7)), torch.rand(2, 17, 64)), ["input_ids", "encoder_hidden_states"], ["logits"], axes,
                (torch.randint(0, 100, (3, 12)), torch.rand(3, 17, 64)))


def _torchvision() -> Any:
    try:
        import torchvision
    except ImportError as e:
        raise Skip("skipped: torchvision not installed") from e
    return torchvision


def _tv_classifier(fn: str, size: int = 128) -> Case:
    """A torchvision classifier on 2 images of size x size, dynamic batch (other: 3)."""
    model = getattr(_torchvision().models, fn)(weights=None).eval()
    return Case(model, (_images(2, size, size),), ["input"], ["output"], {"input": {0: "batch"}, "output": {0: "batch"}},
                (_images(3, size, size),))


def _tv_detector(fn: str, size: int = 320, other: tuple[int, int] = (256, 288), **kw: Any) -> Case:
    """A torchvision detector (its own resize, anchors, NMS) on one image, dynamic H/W."""
    import torch

    model = getattr(_torchvision().models.detection, fn)(weights=None, weights_backbone=None, **kw).eval()

    def run(m: Any, x: Any) -> tuple:
        found = m([x])[0]
        return found["boxes"], found["scores"], found["labels"]

    axes = {"image": {1: "height", 2: "width"}} | {n: {0: "n"} for n in ("boxes", "scores", "labels")}
    return Case(_call(model, run), (torch.rand(3, size, size),), ["image"], ["boxes", "scores", "labels"], axes,
                (torch.rand(3, *other),))


def _tv_segmenter(fn: str) -> Case:
    """A torchvision segmenter on 2 images of 160 x 160, dynamic batch and H/W (other: 3 of 192 x 224)."""
    model = getattr(_torchvision().models.segmentation, fn)(weights=None, weights_backbone=None).eval()
    axes = {n: {0: "batch", 2: "height", 3: "width"} for n in ("input", "out")}
    return Case(_call(model, lambda m, x: m(x)["out"]), (_images(2, 160, 160),), ["input"], ["out"], axes, (_images(3, 192, 224),))


# ---- OCR and text detection (plain torch) ----

def crnn() -> Case:
    """OCR: a CRNN (conv/BN/pool to height 1, a 2-layer BiLSTM, log-softmax over 37 symbols) on
    2 text lines of 32 x 128, dynamic batch and width (other: 3 of 32 x 200)."""
    import torch
    from torch import nn

    def cbr(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, 1, 1), nn.BatchNorm2d(o), nn.ReLU()]

    class CRNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cnn = nn.Sequential(*cbr(1, 32), nn.MaxPool2d(2, 2), *cbr(32, 64), nn.MaxPool2d(2, 2), *cbr(64, 96), *cbr(96, 96),
                                     nn.MaxPool2d((2, 1), (2, 1)), *cbr(96, 128), nn.MaxPool2d((2, 1), (2, 1)), nn.Conv2d(128, 128, 2),
                                     nn.ReLU())
            self.rnn = nn.LSTM(128, 64, num_layers=2, bidirectional=True)
            self.fc = nn.Linear(128, 37)

        def forward(self, x: Any) -> Any:
            seq, _ = self.rnn(self.cnn(x).squeeze(2).permute(2, 0, 1))  # [width', batch, 128]
            return self.fc(seq).log_softmax(2)

    torch.manual_seed(0)
    return Case(CRNN().eval(), (_images(2, 32, 128, 1),), ["image"], ["logprobs"],
                {"image": {0: "batch", 3: "width"}, "logprobs": {0: "T", 1: "batch"}}, (_images(3, 32, 200, 1),))


def dbnet() -> Case:
    """Text detection: a DBNet-style detector (strided conv backbone, FPN of nearest upsample + add,
    bilinear resize, transposed-conv probability/threshold heads, differentiable binarization) on 2
    images of 128 x 128, dynamic batch and H/W (other: 3 of 160 x 224)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    def cbr(i: int, o: int, stride: int = 1) -> nn.Module:
        return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())

    def head() -> nn.Module:
        return nn.Sequential(cbr(32, 8), nn.ConvTranspose2d(8, 8, 2, 2), nn.BatchNorm2d(8), nn.ReLU(), nn.ConvTranspose2d(8, 1, 2, 2),
                             nn.Sigmoid())

    class DBNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stages = nn.ModuleList([nn.Sequential(cbr(3, 16, 2), cbr(16, 16, 2)), cbr(16, 32, 2), cbr(32, 64, 2), cbr(64, 96, 2)])
            self.lateral = nn.ModuleList([nn.Conv2d(c, 32, 1) for c in (16, 32, 64, 96)])
            self.smooth = nn.ModuleList([nn.Conv2d(32, 8, 3, padding=1) for _ in range(4)])
            self.prob, self.thresh = head(), head()

        def forward(self, x: Any) -> Any:
            feats = []
            for stage in self.stages:
                feats.append(x := stage(x))
            p = [self.lateral[3](feats[3])]  # top-down: p4, p3, p2, p1 (strides 32 to 4)
            for i in (2, 1, 0):
                p.append(self.lateral[i](feats[i]) + F.interpolate(p[-1], scale_factor=2.0, mode="nearest"))
            p4, p3, p2, p1 = p
            fuse = torch.cat([self.smooth[0](p1), F.interpolate(self.smooth[1](p2), size=p1.shape[2:], mode="nearest"),
                              F.interpolate(self.smooth[2](p3), size=p1.shape[2:], mode="bilinear", align_corners=False),
                              F.interpolate(self.smooth[3](p4), scale_factor=8.0, mode="nearest")], 1)
            prob, thresh = self.prob(fuse), self.thresh(fuse)
            return torch.cat([prob, thresh, torch.reciprocal(1 + torch.exp(-50 * (prob - thresh)))], 1)

    torch.manual_seed(0)
    axes = {n: {0: "batch", 2: "height", 3: "width"} for n in ("image", "maps")}
    return Case(DBNet().eval(), (_images(2, 128, 128),), ["image"], ["maps"], axes, (_images(3, 160, 224),))


def _nondegenerate(module: Any) -> None:
    """Random BatchNorm statistics and affine, and random all-zero weight matrices (heads that
    transformers zero-initialises), so that random-weight outputs are not constant."""
    import torch

    g = torch.Generator().manual_seed(1)
    for mod in module.modules():
        if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm) and mod.running_mean is not None:
            mod.running_mean.copy_(torch.rand(mod.running_mean.shape, generator=g) * 0.2 - 0.1)
            mod.running_var.copy_(torch.rand(mod.running_var.shape, generator=g) * 0.5 + 0.75)
            if mod.weight is not None:
                mod.weight.data.copy_(torch.rand(mod.weight.shape, generator=g) * 0.5 + 0.75)
        for param in mod.parameters(recurse=False):
            if param.dim() >= 2 and not param.any():
                param.data.normal_(0, 0.05, generator=g)


MODELS: dict[str, Callable[[], Case]] = {
    # text: a decoder with past, decoders without cache fed a left-padded batch, encoders, encoder-decoders
    "gpt2": gpt2,
    "llama": lambda: _causal_lm("Llama"),
    "qwen2": lambda: _causal_lm("Qwen2"),
    "mistral": lambda: _causal_lm("Mistral"),
    "phi": lambda: _causal_lm("Phi"),  # partial rotary, attention and MLP in parallel
    "gemma": lambda: _causal_lm("Gemma", head_dim=16),
    "gpt_neox": lambda: _causal_lm("GPTNeoX", rotary_pct=0.25),
    "falcon": lambda: _causal_lm("Falcon"),  # multi-query attention
    "bloom": lambda: _causal_lm("Bloom"),  # ALiBi position biases from the mask
    "opt": lambda: _causal_lm("OPT", ffn_dim=128),  # positions from the mask's cumulative sum
    "mpnet": lambda: _encoder(lambda t: t.MPNetConfig(**TEXT), "MPNetModel", IDS_MASK),  # relative position buckets
    "clip_text": lambda: _encoder(lambda t: t.CLIPTextConfig(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                                             num_attention_heads=4, max_position_embeddings=64), "CLIPTextModel", IDS_MASK),
    "marian": lambda: _seq2seq(lambda t: t.MarianConfig(**SEQ2SEQ, max_position_embeddings=128, decoder_start_token_id=0, pad_token_id=999),
                               "MarianMTModel"),
    "distilbert": lambda: _encoder(lambda t: t.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                                                max_position_embeddings=128), "DistilBertModel", IDS_MASK),
    "roberta": lambda: _encoder(lambda t: t.RobertaConfig(**TEXT, pad_token_id=1), "RobertaModel", pad_id=1),
    "albert": lambda: _encoder(lambda t: t.AlbertConfig(**TEXT, embedding_size=32), "AlbertModel"),
    "deberta_v2": lambda: _encoder(lambda t: t.DebertaV2Config(**TEXT, relative_attention=True, position_buckets=32, max_relative_positions=64,
                                                               pos_att_type=["p2c", "c2p"], type_vocab_size=0), "DebertaV2Model", IDS_MASK),
    "electra": lambda: _encoder(lambda t: t.ElectraConfig(**TEXT, embedding_size=32), "ElectraForSequenceClassification",
                                axes={n: {0: "batch", 1: "seq"} for n in IDS_MASK_TYPES} | {"out": {0: "batch"}}),
    # lists-style dynamic_axes: the TorchScript exporter names each input's dims apart
    "bert": lambda: _encoder(lambda t: t.BertConfig(**TEXT), "BertModel", ["ids", "mask"], {"ids": [0, 1], "mask": [0, 1], "out": [0, 1]}),
    "t5": lambda: _seq2seq(lambda t: t.T5Config(vocab_size=1000, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                                                relative_attention_num_buckets=16, decoder_start_token_id=0), "T5ForConditionalGeneration"),
    "bart": lambda: _seq2seq(lambda t: t.BartConfig(**SEQ2SEQ, max_position_embeddings=128), "BartForConditionalGeneration"),
    # speech
    "whisper_decoder": whisper_decoder,
    "whisper_encoder": whisper_encoder,
    "data2vec_audio": lambda: _speech(lambda t: t.Data2VecAudioConfig(**SPEECH), "Data2VecAudioModel", masked=True),
    "hubert": lambda: _speech(lambda t: t.HubertConfig(**SPEECH, feat_extract_norm="group"), "HubertModel", masked=False),
    "wav2vec2_ctc": lambda: _speech(lambda t: t.Wav2Vec2Config(**SPEECH, feat_extract_norm="layer", do_stable_layer_norm=True), "Wav2Vec2ForCTC", masked=True),
    "wavlm": lambda: _speech(lambda t: t.WavLMConfig(**SPEECH, feat_extract_norm="layer", num_buckets=32, max_bucket_distance=100), "WavLMModel", masked=True),
    # vision (transformers); (H, W) marks a dynamic image size
    "detr": lambda: _image("DetrForObjectDetection", _detr_config, ["logits", "pred_boxes"], 128, (160, 192)),
    "yolos": lambda: _image("YolosForObjectDetection", lambda t: t.YolosConfig(**VIT, image_size=[128, 128], patch_size=16, num_detection_tokens=10,
                                                                               num_labels=10), ["logits", "pred_boxes"], 128, (160, 192)),
    "segformer": lambda: _image("SegformerForSemanticSegmentation", lambda t: t.SegformerConfig(
        depths=[1, 1, 1, 1], hidden_sizes=[16, 32, 64, 128], decoder_hidden_size=64, num_attention_heads=[1, 2, 4, 8], num_labels=5),
        ["logits"], 128, (160, 192), {"logits": {0: "batch", 2: "h4", 3: "w4"}}),
    "convnext": lambda: _image("ConvNextForImageClassification", lambda t: t.ConvNextConfig(hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 2, 1],
                                                                                            num_labels=10), ["logits"], 128, (160, 160)),
    "deit": lambda: _image("DeiTForImageClassificationWithTeacher", lambda t: t.DeiTConfig(**VIT, image_size=128, patch_size=16, num_labels=10),
                           ["logits"], 128),
    "levit": lambda: _image("LevitForImageClassification", lambda t: t.LevitConfig(
        image_size=128, hidden_sizes=[32, 48, 64], num_attention_heads=[1, 2, 2], depths=[1, 1, 1], key_dim=[8, 8, 8], num_labels=10), ["logits"], 128),
    "dinov2": lambda: _image("Dinov2Model", lambda t: t.Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=2,
                                                                     image_size=112, patch_size=14),
                             ["last_hidden_state", "pooler_output"], 112, (140, 168), {"last_hidden_state": {0: "batch", 1: "tokens"}}),
    "swin": lambda: _image("SwinForImageClassification", lambda t: t.SwinConfig(image_size=128, patch_size=4, embed_dim=32, depths=[2, 2],
                                                                                num_heads=[2, 4], window_size=4, num_labels=10), ["logits"], 128, (160, 160)),
    # static H/W: MobileViT's unfold into patches is traced with the example's sizes
    "mobilevit": lambda: _image("MobileViTForImageClassification", lambda t: t.MobileViTConfig(
        image_size=128, hidden_sizes=[32, 48, 64], neck_hidden_sizes=[8, 16, 24, 32, 40, 48, 64], num_labels=10), ["logits"], 128),
    "clip_vision": lambda: _image("CLIPVisionModel", lambda t: t.CLIPVisionConfig(**VIT, image_size=64, patch_size=16),
                                  ["last_hidden_state", "pooler_output"], 64),
    "dpt": lambda: _image("DPTForDepthEstimation", lambda t: t.DPTConfig(**VIT | {"num_hidden_layers": 4}, image_size=64, patch_size=16,
                                                                         backbone_out_indices=[0, 1, 2, 3], neck_hidden_sizes=[16, 32, 64, 64], fusion_hidden_size=32,
                                                                         head_hidden_size=16), ["predicted_depth"], 64),
    "regnet": lambda: _image("RegNetForImageClassification", lambda t: t.RegNetConfig(embedding_size=16, hidden_sizes=[16, 32, 64, 128],
                                                                                      depths=[1, 1, 1, 1], groups_width=8, num_labels=10),
                             ["logits"], 128, (160, 160)),
    "poolformer": lambda: _image("PoolFormerForImageClassification", lambda t: t.PoolFormerConfig(hidden_sizes=[16, 32, 64, 128],
                                                                                                  depths=[1, 1, 1, 1], num_labels=10),
                                 ["logits"], 128, (160, 160)),
    "trocr_encoder": lambda: _trocr("encoder"),
    "trocr_decoder": lambda: _trocr("decoder"),
    # vision (torchvision)
    "ssdlite320": lambda: _tv_detector("ssdlite320_mobilenet_v3_large"),
    "fasterrcnn": lambda: _tv_detector("fasterrcnn_mobilenet_v3_large_320_fpn", 256, (224, 288), box_score_thresh=0.0),
    # (score_thresh 0: random weights score below the default 0.05, and an empty detection
    # list agrees with anything)
    "retinanet": lambda: _tv_detector("retinanet_resnet50_fpn", 192, (160, 224), min_size=192, max_size=224, score_thresh=0.0),
    "fcos": lambda: _tv_detector("fcos_resnet50_fpn", 192, (160, 224), min_size=192, max_size=224, score_thresh=0.0),
    "deeplabv3": lambda: _tv_segmenter("deeplabv3_mobilenet_v3_large"),
    "lraspp": lambda: _tv_segmenter("lraspp_mobilenet_v3_large"),
    "efficientnet_b0": lambda: _tv_classifier("efficientnet_b0"),
    "shufflenet_v2": lambda: _tv_classifier("shufflenet_v2_x0_5"),
    "swin_t": lambda: _tv_classifier("swin_t"),
    "convnext_tiny": lambda: _tv_classifier("convnext_tiny"),
    # OCR and text detection (plain torch)
    "crnn": crnn,
    "dbnet": dbnet,
}


def export(case: Case, path: Path, exporter: str) -> None:
    """torch.onnx.export of `case` to `path`: TorchScript at opset 17 with dynamic_axes, or
    torch.export at opset 18 with the same input axes as dynamic_shapes."""
    import torch

    module = _call(case.module, lambda m, *xs: m(*xs))  # forward(*xs): dynamic_shapes is then one tuple
    if exporter == "torchscript":
        torch.onnx.export(module, case.inputs, str(path), dynamo=False, opset_version=17, input_names=case.names,
                          output_names=case.outputs, dynamic_axes=case.axes)
    else:
        shapes = tuple({axis: torch.export.Dim.DYNAMIC for axis in case.axes.get(n, ())} or None for n in case.names)
        torch.onnx.export(module, case.inputs, str(path), dynamo=True, opset_version=18, input_names=case.names,
                          output_names=case.outputs, dynamic_shapes=(shapes,), external_data=False)


def _run_ember(args: list[str], log: Path, timeout: float) -> tuple[int | None, str]:
    """`ember ARGS` in its own process group, killed whole after `timeout` s (exit None); its output goes to `log`."""
    proc = subprocess.Popen([EMBER, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, rc = proc.communicate(timeout=timeout)[0], proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, rc = proc.communicate()[0], None
    log.write_text(out)
    return rc, out


def _max_abs(text: str) -> str:
    """The largest `max abs error` ember printed (nan beats any number)."""
    errors = re.findall(r"max abs error ([^\s,]+)", text)
    return max(errors, key=lambda e: (math.isnan(float(e)), float(e))) if errors else "-"


def _first_error(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return next((line for line in lines if line.startswith("error")), lines[-1] if lines else "no output")


def sweep(name: str, exporter: str, out: Path, timeout: float) -> tuple[list[str], str]:
    """One model through export, compile and the other-size verify: its table row and its outcome
    ("agreed", "differs", "export failed" or "skipped")."""
    import onnx

    stem = out / (name if exporter == "torchscript" else f"{name}_dynamo")
    model, artifact, sample, other = (Path(f"{stem}{s}") for s in (".onnx", ".ember", ".npz", "_other.npz"))
    try:
        with open(f"{stem}.export.log", "w") as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            case = MODELS[name]()
            _nondegenerate(case.module)
            export(case, model, exporter)
    except Skip as e:
        return [name, exporter, "-", "-", "-", "-", str(e)], "skipped"
    except Exception as e:  # torch's own failure, by its innermost cause: reported, not charged to ember
        while e.__cause__ is not None:
            e = e.__cause__
        message = re.sub(r"\x1b\[[0-9;]*m", "", f"{type(e).__name__}: {str(e).strip()}").splitlines()[0]
        return [name, exporter, "export failed", "-", "-", "-", message], "export failed"
    graph_inputs = {i.name for i in onnx.load(str(model), load_external_data=False).graph.input}
    for path, tensors in ((sample, case.inputs), (other, case.other)):
        np.savez(path, **{n: t.numpy() for n, t in zip(case.names, tensors) if n in graph_inputs})
    shutil.rmtree(artifact, ignore_errors=True)
    start = time.perf_counter()
    rc, text = _run_ember(["compile", str(model), "-o", str(artifact), "--sample", str(sample), "--verify"],
                          Path(f"{stem}.compile.log"), timeout)
    seconds = f"{time.perf_counter() - start:.1f}"
    error = f"timeout after {timeout:g} s" if rc is None else "" if rc == 0 else _first_error(text)
    ort = _max_abs(text.split("compare with onnxruntime")[-1]) if "compare with onnxruntime" in text else "-"
    verified = "-"
    if rc == 0:
        rc2, text2 = _run_ember(["verify", str(artifact), str(model), "--inputs", str(other)], Path(f"{stem}.verify.log"), timeout)
        verified = f"ok {_max_abs(text2)}" if rc2 == 0 else f"FAIL {_max_abs(text2)}"
        error = error or ("" if rc2 == 0 else f"other size: {_first_error(text2)}")
    compiled = "yes" if rc == 0 else "TIMEOUT" if rc is None else "NO"
    agreed = rc == 0 and verified[:4] != "FAIL"
    return [name, exporter, compiled, ort, verified, seconds, error], "agreed" if agreed else "differs"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=",".join(MODELS), help="comma-separated names (see --list)")
    parser.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "ember_sweep_exports")
    parser.add_argument("--timeout", type=float, default=900, help="seconds for each ember command")
    parser.add_argument("--list", action="store_true", help="print the model names and exit")
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(MODELS))
        return 0
    names = args.models.split(",")
    if unknown := [n for n in names if n not in MODELS]:
        parser.error(f"unknown models {unknown} (see --list)")
    args.out.mkdir(parents=True, exist_ok=True)
    print("| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS), flush=True)
    outcomes = []
    for name in names:
        row, outcome = sweep(name, args.exporter, args.out, args.timeout)
        outcomes.append(outcome)
        print("| " + " | ".join(cell.replace("|", "/")[:160] for cell in row) + " |", flush=True)
    exported = sum(o in ("agreed", "differs") for o in outcomes)
    print(f"\n{outcomes.count('agreed')} compiled and agreed of {exported} exported "
          f"({outcomes.count('export failed')} export failures, {outcomes.count('skipped')} skipped); files in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
