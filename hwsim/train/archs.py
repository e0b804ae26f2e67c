"""Small float models for the 8x8 ``digits`` (and 28x28 ``mnist5k``) data sets, built by name.

* ``mlp`` -- Flatten -> Linear(C*H*W, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 10)
  (``Linear(64, 64)`` for the 8x8 digits).
* ``rescnn`` -- a small residual CNN: a 3x3 stem conv (C -> 16) with BatchNorm and ReLU; one
  residual block (two 3x3 convs 16 -> 16 with BatchNorm, added to the block input, then ReLU);
  a stride-2 3x3 conv (16 -> 32) with BatchNorm and ReLU; global average pooling; Flatten;
  Linear(32, 10). For inputs taller than 16 pixels (28x28 MNIST) the stem conv has stride 2;
  for the 8x8 digits the model is exactly the shipped one (same modules, same initialization).
* ``vit`` -- a small vision transformer: a patch-embedding conv (2x2 stride 2 for inputs up to
  16 pixels, 4x4 stride 4 above: 16 patches of the 8x8 digits), a class token, learned position
  embeddings, 2 pre-LayerNorm encoder blocks of width 32 (4-head self-attention with separate
  q/k/v/out Linears, scores scaled by 1/sqrt(8), Softmax on the last axis; an MLP 32 -> 64 -> 32
  with the erf GELU), a final LayerNorm and Linear(32, 10) on the class token.
* ``silucnn`` -- a small CNN of the SiLU family: 3x3 conv (C -> 16) with BatchNorm and SiLU,
  3x3 conv (16 -> 32) with BatchNorm and SiLU, a squeeze-excite block (global average pool,
  1x1 conv 32 -> 8, SiLU, 1x1 conv 8 -> 32, Sigmoid, multiplied into the feature map), a
  stride-2 3x3 conv (32 -> 32) with BatchNorm and HardSwish, global average pooling, Flatten,
  Linear(32, 10). For inputs taller than 16 pixels the stem conv has stride 2.

The output is the logits (no softmax). Convolutions followed by a BatchNorm have no bias: the
BatchNorm carries the shift. The attention of ``vit`` keeps the batch on axis 0 throughout
(``(B, T, H, Dh)`` reshapes and ``(0, 2, 1, 3)`` permutes, as the conformance suite's TinyViT):
``nn.MultiheadAttention`` is not used, its export moves the batch axis, which hwsim refuses.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import nn

from hwsim.errors import HwsimError


def _mlp(input_shape: tuple[int, ...]) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 64),
        nn.ReLU(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )


def _conv_bn(c_in: int, c_out: int, stride: int = 1) -> list[nn.Module]:
    return [
        nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    ]


class ResidualBlock(nn.Module):
    """``relu(x + bn(conv(relu(bn(conv(x))))))`` with 3x3 convs that keep the channel count."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            *_conv_bn(channels, channels), nn.ReLU(), *_conv_bn(channels, channels)
        )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(x + self.body(x))


def _rescnn(input_shape: tuple[int, ...]) -> nn.Module:
    if len(input_shape) != 3:
        raise HwsimError(f"rescnn needs a (C, H, W) input shape, got {tuple(input_shape)}")
    c, h, _ = input_shape
    return nn.Sequential(
        *_conv_bn(c, 16, stride=2 if h > 16 else 1),
        nn.ReLU(),
        ResidualBlock(16),
        *_conv_bn(16, 32, stride=2),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


class Attention(nn.Module):
    """Multi-head self-attention on ``(B, T, D)`` with separate q, k, v and output Linears:
    ``(B, T, H, Dh)`` reshapes, ``(0, 2, 1, 3)`` permutes, ``q @ k^T / sqrt(Dh)``, Softmax on
    the last axis, ``@ v``, heads merged back. The batch stays on axis 0 throughout."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.dh = heads, dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = (
            f(x).reshape(b, t, self.heads, self.dh).permute(0, 2, 1, 3)
            for f in (self.q, self.k, self.v)
        )
        att = (q @ k.transpose(-2, -1)) / float(self.dh) ** 0.5
        y = (att.softmax(dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, t, d)
        return self.out(y)


class EncoderBlock(nn.Module):
    """A pre-LayerNorm transformer encoder block: ``x + attn(ln1(x))``, then
    ``x + mlp(ln2(x))`` with an erf-GELU MLP."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """Patch-embedding conv, class token, learned position embeddings, ``depth`` pre-LN encoder
    blocks, final LayerNorm, Linear head on the class token."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        patch: int,
        dim: int = 32,
        heads: int = 4,
        depth: int = 2,
        hidden: int = 64,
        num_classes: int = 10,
    ):
        super().__init__()
        c, h, w = input_shape
        tokens = (h // patch) * (w // patch)
        self.embed = nn.Conv2d(c, dim, kernel_size=patch, stride=patch)
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.02 * torch.randn(1, tokens + 1, dim))
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)  # (B, T, D)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


def _vit(input_shape: tuple[int, ...]) -> nn.Module:
    if len(input_shape) != 3:
        raise HwsimError(f"vit needs a (C, H, W) input shape, got {tuple(input_shape)}")
    _, h, w = input_shape
    patch = 2 if max(h, w) <= 16 else 4
    if h % patch or w % patch:
        raise HwsimError(
            f"vit needs an input height and width divisible by its patch size {patch}, got {h}x{w}"
        )
    return ViT(input_shape, patch)


class SqueezeExcite(nn.Module):
    """``x * sigmoid(conv(silu(conv(gap(x)))))``: 1x1 convs ``C -> C/r -> C`` with bias."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.act = nn.SiLU()
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.fc2(self.act(self.fc1(self.pool(x)))))


def _silucnn(input_shape: tuple[int, ...]) -> nn.Module:
    if len(input_shape) != 3:
        raise HwsimError(f"silucnn needs a (C, H, W) input shape, got {tuple(input_shape)}")
    c, h, _ = input_shape
    return nn.Sequential(
        *_conv_bn(c, 16, stride=2 if h > 16 else 1),
        nn.SiLU(),
        *_conv_bn(16, 32),
        nn.SiLU(),
        SqueezeExcite(32),
        *_conv_bn(32, 32, stride=2),
        nn.Hardswish(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, 10),
    )


_BUILDERS = {"mlp": _mlp, "rescnn": _rescnn, "vit": _vit, "silucnn": _silucnn}

ARCHS: tuple[str, ...] = tuple(_BUILDERS)

DESCRIPTIONS = {
    "mlp": "MLP: Flatten -> Gemm(64->64) -> Relu -> Gemm(64->32) -> Relu -> Gemm(32->10)",
    "rescnn": (
        "Residual CNN: Conv3x3(1->16)+BN+Relu; residual block [Conv3x3(16->16)+BN+Relu+"
        "Conv3x3(16->16)+BN, Add input, Relu]; Conv3x3 stride 2 (16->32)+BN+Relu; "
        "GlobalAveragePool; Flatten; Gemm(32->10)"
    ),
    "vit": (
        "ViT: Conv2x2 stride 2 patch embedding (1->32, 16 tokens) + class token + learned "
        "position embedding; 2 pre-LN encoder blocks [LayerNorm, 4-head self-attention "
        "(q/k/v/out MatMul, Softmax), Add; LayerNorm, MLP 32->64->32 with erf GELU, Add]; "
        "LayerNorm; class token -> Gemm(32->10)"
    ),
    "silucnn": (
        "SiLU CNN: Conv3x3(1->16)+BN+SiLU; Conv3x3(16->32)+BN+SiLU; squeeze-excite "
        "[GlobalAveragePool, Conv1x1(32->8), SiLU, Conv1x1(8->32), Sigmoid, Mul]; "
        "Conv3x3 stride 2 (32->32)+BN+HardSwish; GlobalAveragePool; Flatten; Gemm(32->10)"
    ),
}


def build(arch: str, input_shape: tuple[int, ...] = (1, 8, 8)) -> nn.Module:
    """A freshly initialized model of architecture ``arch`` (one of :data:`ARCHS`) for inputs of
    shape ``input_shape`` (without the batch axis; ``(1, 8, 8)``: the digits).

    Initialization draws from torch's global RNG: seed it first for a reproducible model.
    """
    try:
        builder = _BUILDERS[arch]
    except KeyError:
        raise HwsimError(
            f"unknown architecture {arch!r}: known ones are {', '.join(ARCHS)}"
        ) from None
    try:
        shape = tuple(operator.index(d) for d in input_shape)
    except TypeError:
        shape = ()
    if not shape or min(shape) < 1 or any(isinstance(d, bool) for d in input_shape):
        raise HwsimError(f"input_shape must be a tuple of positive ints, got {input_shape!r}")
    return builder(shape)


def count_params(model: nn.Module) -> int:
    """Number of trainable parameters (BatchNorm running statistics excluded)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
