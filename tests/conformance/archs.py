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
    return _export(build(name, seed), torch.zeros(1, *INPUT_SHAPE), path, 13)


def _export(model, x, path, opset: int) -> str:
    """The TorchScript exporter (``dynamo=False``), input "input" with a dynamic batch axis,
    output "output"; its deprecation notices silenced."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's notices
        torch.onnx.export(
            model,
            (x,),
            str(path),
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
            opset_version=opset,
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


# --- transformers and modern CNNs (issue 15): tiny ViT- and BERT-style encoders, a SiLU /
# HardSwish / squeeze-excite CNN; random weights, exported with a dynamic batch axis -----------
TINY = ("tiny_vit", "tiny_vit_timm", "tiny_bert", "tiny_silu_cnn")
TINY_VIT_INPUT = (3, 16, 16)
TINY_BERT_TOKENS = 8
TINY_BERT_VOCAB = 50
TINY_CNN_INPUT = (3, 16, 16)


class TinyAttention(nn.Module):
    """Multi-head self-attention written out as exporters see BERT / ViT attention: one qkv
    Linear, split, (B, T, H, Dh) reshapes and (0, 2, 1, 3) permutes, scaled scores, Softmax on
    the last axis, context MatMul, output projection. The batch stays on axis 0 throughout."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(B, T, self.heads, self.dh).permute(0, 2, 1, 3) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) / float(self.dh) ** 0.5
        y = (att.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(B, T, D)
        return self.proj(y)


class TinyBlock(nn.Module):
    """A transformer encoder block: pre-LN (ViT) or post-LN (BERT), GELU MLP."""

    def __init__(self, dim, heads, mlp, pre_ln=True, gelu="none"):
        super().__init__()
        self.pre = pre_ln
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = TinyAttention(dim, heads)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp), nn.GELU(approximate=gelu), nn.Linear(mlp, dim)
        )

    def forward(self, x):
        if self.pre:
            x = x + self.attn(self.ln1(x))
            return x + self.mlp(self.ln2(x))
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


class TinyViT(nn.Module):
    """Patch embedding conv (4x4/4: 16 patches of 32), class token, learned position embedding,
    2 pre-LN blocks (4 heads, Erf GELU MLP), final LayerNorm, class-token head (10 logits)."""

    def __init__(self, dim=32, heads=4, depth=2, patch=4, num_classes=NUM_CLASSES):
        super().__init__()
        c, h, w = TINY_VIT_INPUT
        self.embed = nn.Conv2d(c, dim, patch, patch)
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, (h // patch) * (w // patch) + 1, dim))
        self.blocks = nn.Sequential(*[TinyBlock(dim, heads, 2 * dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class TinyBERT(nn.Module):
    """Token embedding (Gather) + position embedding (Gather of arange), embedding LayerNorm,
    2 post-LN blocks (4 heads, Tanh-form GELU MLP), first-token classifier (2 logits)."""

    def __init__(self, dim=32, heads=4, depth=2, vocab=TINY_BERT_VOCAB, num_classes=2):
        super().__init__()
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Embedding(TINY_BERT_TOKENS, dim)
        self.ln = nn.LayerNorm(dim)
        self.blocks = nn.Sequential(
            *[TinyBlock(dim, heads, 2 * dim, pre_ln=False, gelu="tanh") for _ in range(depth)]
        )
        self.head = nn.Linear(dim, num_classes)

    def forward(self, ids):
        pos = torch.arange(ids.shape[1], device=ids.device).unsqueeze(0).expand(ids.shape[0], -1)
        x = self.ln(self.tok(ids) + self.pos(pos))
        return self.head(self.blocks(x)[:, 0])


class SqueezeExcite(nn.Module):
    def __init__(self, c, r=4, gate=None):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)
        self.gate = gate or nn.Sigmoid()

    def forward(self, x):
        s = self.gate(self.fc2(torch.relu(self.fc1(x.mean((2, 3), keepdim=True)))))
        return x * s


class TinySiLUCNN(nn.Module):
    """conv-BN-SiLU stem, depthwise conv-BN-HardSwish with squeeze-excite (Sigmoid gate), 1x1
    conv-BN-SiLU with squeeze-excite (HardSigmoid gate) and a residual Add, global average
    pool, Linear (10 logits)."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU()
        )
        self.dw = nn.Sequential(
            nn.Conv2d(16, 16, 3, 1, 1, groups=16, bias=False), nn.BatchNorm2d(16), nn.Hardswish()
        )
        self.se1 = SqueezeExcite(16)
        self.pw = nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU())
        self.se2 = SqueezeExcite(16, gate=nn.Hardsigmoid())
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.se2(self.pw(self.se1(self.dw(x))))
        return self.fc(torch.flatten(x.mean((2, 3), keepdim=True), 1))


def build_tiny(name: str, seed: int = 0) -> nn.Module:
    """One of TINY with deterministic random weights (BatchNorms with random statistics), in
    eval mode."""
    if name not in TINY:
        raise ValueError(f"unknown architecture {name!r}; one of {TINY}")
    torch.manual_seed(seed)
    model = {
        "tiny_vit": TinyViT,
        "tiny_vit_timm": TinyViTMeanPool,
        "tiny_bert": TinyBERT,
        "tiny_silu_cnn": TinySiLUCNN,
    }[name]()
    _randomise_bn(model, torch.Generator().manual_seed(seed + 1))
    return model.eval()


def tiny_inputs(name: str, n: int = 3, seed: int = 4321) -> np.ndarray:
    """``n`` inputs for a TINY model: N(0, 1) images (float32), or token ids (int64)."""
    rng = np.random.default_rng(seed)
    if name == "tiny_bert":
        return rng.integers(0, TINY_BERT_VOCAB, (n, TINY_BERT_TOKENS)).astype(np.int64)
    shape = TINY_VIT_INPUT if name.startswith("tiny_vit") else TINY_CNN_INPUT
    return rng.standard_normal((n, *shape)).astype(np.float32)


def export_tiny(name: str, path, opset: int = 17, seed: int = 0) -> str:
    """Export ``build_tiny(name, seed)`` with the TorchScript exporter (``dynamo=False``),
    input "input" with a dynamic batch axis, output "output"."""
    return _export(build_tiny(name, seed), torch.from_numpy(tiny_inputs(name, 2)), path, opset)


class TimmAttention(TinyAttention):
    """The attention of timm's VisionTransformer: the qkv output reshaped to (B, T, 3, H, Dh),
    permuted (2, 0, 3, 1, 4) -- the batch moves to axis 1 -- and unbound on axis 0."""

    def forward(self, x):
        B, T, D = x.shape
        qkv = self.qkv(x).reshape(B, T, 3, self.heads, self.dh).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        att = (q * self.dh**-0.5) @ k.transpose(-2, -1)
        return self.proj((att.softmax(dim=-1) @ v).transpose(1, 2).reshape(B, T, D))


class TinyViTMeanPool(TinyViT):
    """TinyViT with timm's attention (:class:`TimmAttention`), no class token, mean pooling
    over the tokens (ReduceMean on axis 1)."""

    def __init__(self, dim=32, heads=4, depth=2, patch=4, num_classes=NUM_CLASSES):
        super().__init__(dim, heads, depth, patch, num_classes)
        for b in self.blocks:
            b.attn = TimmAttention(dim, heads)
        self.pos = nn.Parameter(self.pos.data[:, 1:])

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(dim=1))


def quantize_tiny(
    name: str,
    float_path,
    out_path,
    per_channel: bool,
    activations: str = "u8",
    symmetric: bool = False,
    qoperator: bool = False,
) -> str:
    """onnxruntime ``quantize_static`` of the TINY model ``name`` exported at ``float_path``
    (no pre-processing): QDQ (or QOperator), weights QInt8, activations QUInt8 (``"u8"``) or
    QInt8 (``"s8"``), asymmetric or ``ActivationSymmetric``; min/max calibration on
    ``tiny_inputs(name, 4, seed=i)`` for ``i`` in 0..3."""
    import logging

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"input": tiny_inputs(name, 4, seed=i)} for i in range(4)])

        def get_next(self):
            return next(self.it, None)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing before quantization"
    try:
        quantize_static(
            str(float_path),
            str(out_path),
            Reader(),
            quant_format=QuantFormat.QOperator if qoperator else QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8 if activations == "u8" else QuantType.QInt8,
            weight_type=QuantType.QInt8,
            extra_options={"ActivationSymmetric": True} if symmetric else None,
        )
    finally:
        root.setLevel(level)
    return str(out_path)


# --- onnxruntime dynamic quantization (quantize_dynamic): a 2-layer MLP on 8x8 images ---------
MLP_INPUT = (1, 8, 8)


class TinyMLP(nn.Module):
    """Flatten, Linear 64 -> 32, ReLU, Linear 32 -> 10 (exported as two Gemms)."""

    def __init__(self, num_classes=NUM_CLASSES):
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, num_classes)
        )

    def forward(self, x):
        return self.net(x)


def export_mlp(path, seed: int = 0) -> str:
    """Export :class:`TinyMLP` (weights from ``torch.manual_seed(seed)``), input "input" of shape
    ``(N, 1, 8, 8)`` with a dynamic batch axis, output "output"."""
    torch.manual_seed(seed)
    return _export(TinyMLP().eval(), torch.zeros(1, *MLP_INPUT), path, 17)


def mlp_inputs(n: int = 8, seed: int = 4321) -> np.ndarray:
    """``n`` U(0, 1) images, float32 (n, 1, 8, 8) (the digits' range)."""
    return np.random.default_rng(seed).random((n, *MLP_INPUT)).astype(np.float32)


def quantize_dynamic(float_path, out_path, per_channel: bool, weight_type: str = "QInt8") -> str:
    """onnxruntime ``quantize_dynamic`` (no pre-processing) with weights ``"QInt8"`` or
    ``"QUInt8"``, per tensor or per channel; activations are quantized at run time (uint8)."""
    import logging

    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_quantize_dynamic

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # "consider pre-processing before quantization"
    try:
        ort_quantize_dynamic(
            str(float_path),
            str(out_path),
            per_channel=per_channel,
            weight_type=getattr(QuantType, weight_type),
        )
    finally:
        root.setLevel(level)
    return str(out_path)
