"""A detector exported by torch.onnx with its post-processing in the graph, compiled: a strided
conv backbone on a symbolic image size, anchors' boxes decoded, TopK of min(n, 300) scores,
the ones above a threshold kept by boolean indexing (two NonZero of one mask, which CSE
merges), class-aware NonMaxSuppression, the kept boxes, labels and scores gathered. Every
op of the tail is one whose output size depends on the data. Against onnxruntime at three
image sizes. (Slow: needs torch, from the zoo extra.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_onnxruntime

from ember.compiler.driver import compile_model
from ember.runtime import load

pytestmark = pytest.mark.slow


def export_detector(path: Path) -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn

    class NMS(torch.autograd.Function):
        """ONNX NonMaxSuppression (torchvision's export of batched_nms, without torchvision)."""

        @staticmethod
        def forward(ctx, boxes, scores, limit, iou, threshold):  # type: ignore[no-untyped-def]
            return torch.zeros((3, 3), dtype=torch.int64)  # (only traced)

        @staticmethod
        def symbolic(g, boxes, scores, limit, iou, threshold):  # type: ignore[no-untyped-def]
            return g.op("NonMaxSuppression", boxes, scores, limit, iou, threshold)

    class Detector(nn.Module):
        def __init__(self, classes: int = 5) -> None:
            super().__init__()
            self.classes = classes
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                                      nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU())
            self.cls = nn.Conv2d(32, 3 * classes, 1)
            self.box = nn.Conv2d(32, 3 * 4, 1)

        def forward(self, x):  # type: ignore[no-untyped-def]
            f = self.body(x)
            n = x.shape[0]
            cls = self.cls(f).permute(0, 2, 3, 1).reshape(n, -1, self.classes)
            box = self.box(f).permute(0, 2, 3, 1).reshape(n, -1, 4)
            box = torch.cat([box[..., :2] * 8, box[..., :2] * 8 + box[..., 2:].exp() * 16], -1)
            flat = cls.sigmoid()[0].flatten()
            top, index = flat.topk(torch.clamp(torch.tensor(flat.shape[0]), max=300))
            keep = top > 0.3
            top, index = top[keep], index[keep]
            anchor, label = index // self.classes, index % self.classes
            boxes = box[0][anchor]
            per_class = (label[None, :] == torch.arange(self.classes)[:, None]).float() * top[None, :]
            sel = NMS.apply(boxes[None], per_class[None], torch.tensor([50]), torch.tensor([0.2]), torch.tensor([0.0]))
            kept = sel[:, 2]
            return boxes[kept], label[kept], top[kept]

    torch.manual_seed(0)
    model = Detector().eval()
    torch.onnx.export(model, (torch.randn(1, 3, 64, 96),), str(path), opset_version=17, dynamo=False, input_names=["x"],
                      output_names=["boxes", "labels", "scores"], dynamic_axes={"x": {2: "H", 3: "W"}})


def test_a_torch_exported_detector_with_its_nms_compiles_and_matches_onnxruntime(tmp_path: Path,
                                                                                   rng: np.random.Generator) -> None:
    import onnx

    export_detector(tmp_path / "det.onnx")
    model = onnx.load(tmp_path / "det.onnx")
    compile_model(tmp_path / "det.onnx", tmp_path / "det.ember",
                  sample={"x": rng.standard_normal((1, 3, 64, 96)).astype(np.float32)})
    artifact = load(tmp_path / "det.ember")
    kept = []
    for shape in ((1, 3, 64, 96), (1, 3, 128, 128), (1, 3, 32, 40)):
        x = (rng.standard_normal(shape) * 2).astype(np.float32)
        got, want = artifact(x=x), run_onnxruntime(model, {"x": x})
        for name, value in want.items():
            assert got[name].shape == value.shape, (shape, name, got[name].shape, value.shape)
            np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-4, err_msg=f"{shape} {name}")
        kept.append(len(want["labels"]))
    assert max(kept) > 1, "the inputs should keep several boxes, or the test checks little"
