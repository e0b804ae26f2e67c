"""Reduced ResNet-18 and MobileNetV2 for conformance tests: torch definitions, float ONNX export
and onnxruntime QDQ quantization, all deterministic.

Both networks take a 3x64x64 image and give 10 logits. Weights come from a fixed torch seed and
every BatchNorm gets random statistics (running mean / variance, weight, bias), so the Convs
that BatchNorm folds into have varied per-channel scales, as trained networks do.

* ``resnet18``: the ResNet-18 layout (7x7/2 stem + 3x3/2 max-pool, BasicBlocks [2, 2, 2, 2]
  with residual Adds and 1x1/2 projection shortcuts, global average pool, Linear) at widths
  16/32/64/128; the stages run at 16, 8, 4 and 2 pixels.
* ``mobilenetv2``: the MobileNetV2 layout (inverted residuals: 1x1 expand x6, depthwise 3x3,
  1x1 linear projection, ReLU6, residual Adds where the shape allows) at width multiplier 0.35,
  last 1x1 conv 1280 wide as in the original, global average pool, Linear.

    import archs                              # tests/conformance on sys.path (pytest does this)
    archs.export_float("resnet18", "f.onnx", seed=0)
    archs.quantize_qdq("f.onnx", "q.onnx", per_channel=True, calib=archs.calib_data())
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import torch
from torch import nn

ARCHS = ("resnet18", "mobilenetv2")
INPUT_SHAPE = (3, 64, 64)
NUM_CLASSES = 10


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU()
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.relu(y + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    def __init__(self, widths=(16, 32, 64, 128), num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, 2, 1),
        )
        layers, cin = [], widths[0]
        for i, w in enumerate(widths):
            for j in range(2):
                layers.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                cin = w
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))


def _divisible(v, d=8):
    n = max(d, int(v + d / 2) // d * d)
    return n + d if n < 0.9 * v else n


def _conv_bn(cin, cout, k, stride, groups=1, act=True):
    mods = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        mods.append(nn.ReLU6())
    return nn.Sequential(*mods)


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        mods = [] if expand == 1 else [_conv_bn(cin, hidden, 1, 1)]
        mods += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, 1, act=False)]
        self.block = nn.Sequential(*mods)
        self.residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.block(x) if self.residual else self.block(x)


class MobileNetV2(nn.Module):
    # (expansion t, channels c, repeats n, first stride s), as in the paper
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, width=0.35, num_classes=NUM_CLASSES, last=1280):
        super().__init__()
        cin = _divisible(32 * width)
        feats = [_conv_bn(3, cin, 3, 2)]
        for t, c, n, s in self.SETTINGS:
            cout = _divisible(c * width)
            for i in range(n):
                feats.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
                cin = cout
        last = _divisible(last * max(1.0, width))
        feats.append(_conv_bn(cin, last, 1, 1))
        self.features = nn.Sequential(*feats)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


def _randomise_bn(model, gen):
    """Random BatchNorm statistics and affine parameters (trained networks have varied ones)."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            u = lambda lo, hi: lo + (hi - lo) * torch.rand(c, generator=gen)  # noqa: E731
            with torch.no_grad():
                m.running_mean.copy_(0.3 * torch.randn(c, generator=gen))
                m.running_var.copy_(torch.exp(torch.randn(c, generator=gen) * 0.6) * 0.5)
                m.weight.copy_(u(0.4, 1.6) * torch.where(torch.rand(c, generator=gen) < 0.1, -1.0, 1.0))
                m.bias.copy_(0.2 * torch.randn(c, generator=gen))


def build(name: str, seed: int = 0) -> nn.Module:
    """The architecture ``name`` (one of ARCHS) with deterministic random weights, in eval mode."""
    if name not in ARCHS:
        raise ValueError(f"unknown architecture {name!r}; one of {ARCHS}")
    torch.manual_seed(seed)
    model = ResNet18() if name == "resnet18" else MobileNetV2()
    gen = torch.Generator().manual_seed(seed + 1)
    _randomise_bn(model, gen)
    return model.eval()


def export_float(name: str, path, seed: int = 0) -> str:
    """Export ``build(name, seed)`` to float ONNX (opset 13, input "input" with a dynamic batch,
    output "output"). The TorchScript exporter (``dynamo=False``: the torch.export one needs
    onnxscript, which is not installed), which folds BatchNorm into the Convs."""
    model = build(name, seed)
    x = torch.zeros(1, *INPUT_SHAPE)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter's notice
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            opset_version=13,
            do_constant_folding=True,
            dynamo=False,
        )
    return str(path)


def calib_data(n: int = 16, seed: int = 1234) -> np.ndarray:
    """``n`` N(0, 1) images, float32 (n, 3, 64, 64)."""
    return np.random.default_rng(seed).standard_normal((n, *INPUT_SHAPE)).astype(np.float32)


def inputs(n: int = 8, seed: int = 4321) -> np.ndarray:
    """Evaluation inputs: ``n`` N(0, 1) images, float32 (n, 3, 64, 64)."""
    return calib_data(n, seed)


def quantize_qdq(float_path, out_path, per_channel: bool, calib: np.ndarray | None = None) -> str:
    """onnxruntime ``quant_pre_process`` then ``quantize_static`` (QDQ, activations QUInt8,
    weights QInt8, min/max calibration on ``calib``, default ``calib_data()``)."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    calib = calib_data() if calib is None else calib

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": calib[i : i + 4]} for i in range(0, len(calib), 4)])

        def get_next(self):
            return next(self.it, None)

    with tempfile.TemporaryDirectory() as d:
        pre = os.path.join(d, "pre.onnx")
        quant_pre_process(str(float_path), pre, skip_symbolic_shape=True)
        quantize_static(
            pre,
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
    return str(out_path)


def make(name: str, out_dir, per_channel: bool, seed: int = 0) -> tuple[str, str]:
    """Float and QDQ model of ``name`` in ``out_dir``: (float_path, qdq_path)."""
    pc = "perchannel" if per_channel else "pertensor"
    fp = os.path.join(str(out_dir), f"{name}_float.onnx")
    if not os.path.exists(fp):
        export_float(name, fp, seed)
    qp = os.path.join(str(out_dir), f"{name}_{pc}.onnx")
    quantize_qdq(fp, qp, per_channel)
    return fp, qp
