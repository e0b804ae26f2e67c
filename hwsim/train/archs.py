"""Small float models for the 8x8 ``digits`` (and 28x28 ``mnist5k``) data sets, built by name.

* ``mlp`` -- Flatten -> Linear(C*H*W, 64) -> ReLU -> Linear(64, 32) -> ReLU -> Linear(32, 10)
  (``Linear(64, 64)`` for the 8x8 digits).
* ``rescnn`` -- a small residual CNN: a 3x3 stem conv (C -> 16) with BatchNorm and ReLU; one
  residual block (two 3x3 convs 16 -> 16 with BatchNorm, added to the block input, then ReLU);
  a stride-2 3x3 conv (16 -> 32) with BatchNorm and ReLU; global average pooling; Flatten;
  Linear(32, 10). For inputs taller than 16 pixels (28x28 MNIST) the stem conv has stride 2;
  for the 8x8 digits the model is exactly the shipped one (same modules, same initialization).

The output is the logits (no softmax). Convolutions have no bias: the BatchNorm that follows
carries the shift.
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


_BUILDERS = {"mlp": _mlp, "rescnn": _rescnn}

ARCHS: tuple[str, ...] = tuple(_BUILDERS)

DESCRIPTIONS = {
    "mlp": "MLP: Flatten -> Gemm(64->64) -> Relu -> Gemm(64->32) -> Relu -> Gemm(32->10)",
    "rescnn": (
        "Residual CNN: Conv3x3(1->16)+BN+Relu; residual block [Conv3x3(16->16)+BN+Relu+"
        "Conv3x3(16->16)+BN, Add input, Relu]; Conv3x3 stride 2 (16->32)+BN+Relu; "
        "GlobalAveragePool; Flatten; Gemm(32->10)"
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
