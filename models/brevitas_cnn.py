"""A small Brevitas CNN for the 8x8 digits, exported as QONNX and QCDQ (issue 17).

``QuantIdentity`` (8-bit input) -> ``QuantConv2d`` 3x3 (1->16, 4-bit weights) ->
``QuantReLU`` (4-bit) -> ``QuantConv2d`` 3x3 (16->16) -> ``QuantReLU`` (4-bit) -> residual
add -> ``QuantIdentity`` (8-bit) -> global average pooling -> ``QuantIdentity`` (8-bit) ->
``QuantLinear`` (16->10, output 8-bit unless ``out_quant=False``). Variants: weights per
tensor or per channel, ``narrow`` on or off, float or Int32 biases; exporters ``export_qonnx``
/ ``export_onnx_qcdq``, TorchScript or dynamo (QCDQ with ``dynamo=True`` refuses quantized
biases: Brevitas 0.13.4).

Needs the test extra (brevitas, torch). ``python models/brevitas_cnn.py OUT_DIR [--train N]``
writes ``brevitas_{qonnx,qcdq}.onnx`` (per-channel, narrow, Int32 biases, TorchScript), trained
for ``N`` epochs (default 10) on ``digits-train`` -- what the README's example runs. The tests
build the variants with :func:`export` (untrained, seeded).
"""

from __future__ import annotations

import argparse
import itertools
import os
import warnings
from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """One export: format ``qonnx`` / ``qcdq``, exporter (``dynamo``), weights per channel,
    ``narrow`` weight range, Int32 biases, an 8-bit output quantizer on the classifier."""

    fmt: str = "qonnx"
    dynamo: bool = False
    per_channel: bool = False
    narrow: bool = True
    int_bias: bool = True
    out_quant: bool = True

    @property
    def name(self) -> str:
        return (
            f"{self.fmt}_{'dynamo' if self.dynamo else 'ts'}_{'pc' if self.per_channel else 'pt'}"
            f"_{'narrow' if self.narrow else 'wide'}_{'i32' if self.int_bias else 'fbias'}"
            + ("" if self.out_quant else "_floatout")
        )

    @property
    def exportable(self) -> bool:
        return not (self.fmt == "qcdq" and self.dynamo and self.int_bias)


VARIANTS = tuple(
    v
    for v in (
        Variant(f, d, pc, n, ib)
        for f, d, pc, n, ib in itertools.product(
            ("qonnx", "qcdq"), (False, True), (False, True), (True, False), (True, False)
        )
    )
    if v.exportable
)
"""The 28 exports Brevitas 0.13.4 writes (QCDQ + dynamo + Int32 bias is refused by it)."""


def build(v: Variant, seed: int = 0):
    """The model of variant ``v`` (eval mode, weights from ``torch.manual_seed(seed)``)."""
    import brevitas.nn as qnn
    import torch
    from brevitas.quant import (
        Int8ActPerTensorFloat,
        Int8WeightPerChannelFloat,
        Int8WeightPerTensorFloat,
        Int32Bias,
    )
    from brevitas.quant_tensor import QuantTensor

    def value(t):
        return t.value if isinstance(t, QuantTensor) else t

    kw = dict(
        weight_quant=Int8WeightPerChannelFloat if v.per_channel else Int8WeightPerTensorFloat,
        weight_bit_width=4,
        weight_narrow_range=v.narrow,
        bias=True,
        bias_quant=Int32Bias if v.int_bias else None,
        return_quant_tensor=False,
    )

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(1, 16, 3, padding=1, **kw)
            self.relu1 = qnn.QuantReLU(bit_width=4, return_quant_tensor=True)
            self.conv2 = qnn.QuantConv2d(16, 16, 3, padding=1, **kw)
            self.relu2 = qnn.QuantReLU(bit_width=4, return_quant_tensor=False)
            self.addq = qnn.QuantIdentity(bit_width=8, return_quant_tensor=False)
            self.pool = torch.nn.AdaptiveAvgPool2d(1)
            self.poolq = qnn.QuantIdentity(bit_width=8, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(
                16, 10, output_quant=Int8ActPerTensorFloat if v.out_quant else None, **kw
            )

        def forward(self, x):
            x = self.inp(x)
            a = self.relu1(self.conv1(x))
            b = self.relu2(self.conv2(a))
            y = self.addq(value(a) + b)
            y = torch.flatten(self.pool(y), 1)
            return value(self.fc(self.poolq(y)))

    torch.manual_seed(seed)
    return Net().eval()


def export(v: Variant, path, model=None, batch: int = 4, seed: int = 0) -> str:
    """Export variant ``v`` (``model``, or :func:`build`'s) to ``path`` with an input of
    ``batch`` samples (the dynamo exporter bakes that batch into its Reshape)."""
    import torch
    from brevitas.export import export_onnx_qcdq, export_qonnx

    model = build(v, seed) if model is None else model
    x = torch.rand(batch, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    fn = export_qonnx if v.fmt == "qonnx" else export_onnx_qcdq
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        model(x)
        fn(model, x, export_path=str(path), dynamo=v.dynamo, opset_version=18 if v.dynamo else 17)
    return str(path)


def train(model, epochs: int, seed: int = 0):
    """Quantization-aware training on ``digits-train`` (Adam, lr 3e-3, batch 64)."""
    import numpy as np
    import torch

    from hwsim.data import load_data

    ds = load_data("digits-train")
    x = torch.from_numpy(np.asarray(ds.x, np.float32))
    y = torch.from_numpy(np.asarray(ds.y, np.int64))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--train", type=int, default=10, help="QAT epochs on digits-train")
    a = ap.parse_args()
    os.makedirs(a.out_dir, exist_ok=True)
    for fmt in ("qonnx", "qcdq"):
        v = Variant(fmt, per_channel=True)
        m = train(build(v), a.train)
        print(export(v, os.path.join(a.out_dir, f"brevitas_{fmt}.onnx"), m))


if __name__ == "__main__":
    main()
