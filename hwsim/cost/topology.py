"""Layers to cost, from SCALE-Sim topology CSVs or from an hwsim graph / quantized program.

A :class:`Layer` is one GEMM of ``Np`` rows (output pixels x batch), ``K`` reduction and
``Mf`` columns (filters), repeated ``groups`` times (grouped / depthwise convolution), with the
operand widths it runs at (``None``: the accelerator's defaults) and what its quantization
scheme adds (scale registers, per-sample range finding and shifts).

SCALE-Sim topology formats (``../shared/REFERENCES.md``): convolution rows
``Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter,
Strides,`` (padding already in the IFMAP size; ``ofmap = ceil((ifmap - filt + stride)/stride)``)
and GEMM rows ``Layer Name, M, N, K,`` (``Np = M``, ``Mf = N``). The first line is a header; the
format is told by its number of fields. Errors name the file, line and column.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hwsim.cost.memory import ConvGeometry
from hwsim.errors import HwsimError
from hwsim.graph.ir import MAC_OPS, MATMUL_OPS, Graph, Op
from hwsim.graph.shapes import infer_shapes


class TopologyError(HwsimError):
    """A malformed topology row or a layer that cannot exist."""


@dataclass(frozen=True)
class Layer:
    """One MAC layer as the array sees it (per-group GEMM ``Np x K`` by ``K x Mf``)."""

    name: str
    Np: int
    K: int
    Mf: int
    groups: int = 1
    ifmap_elems: int = 0  # unique input elements the layer reads (for DRAM traffic)
    samples: int = 1
    wbits: int | None = None
    abits: int | None = None
    acc_bits: int | None = None
    out_bits: int | None = None
    register: str = "tflite"  # tflite | tflite-single | ort | pow2
    scale_registers: int = 1  # 1 per tensor, or one per output channel
    act_mode: str = "static"  # static | data-free | dynamic | shift (of the output)
    s_max: int = 0
    shift_base: str = "static"  # static | runtime (a shift output's base)
    in_mode: str = "static"  # the input's act mode (a per-sample input realigns the bias)
    bias: bool = False
    align: bool = False  # per-channel weight scales brought to one grid (per-sample output)
    rows_out: int = 0  # ranges of the output per batch: tokens of a per-token output (0: samples)
    rows_in: int = 0  # scales of the input per batch: tokens of a per-token input (0: samples)
    token_shifts: int = 0  # matmul: products shifted per token of v (per-token-shift p @ v)
    token_aligns: int = 0  # matmul: v's elements aligned to one grid (per-token dynamic p @ v)
    extra: dict = field(default_factory=dict)
    # the convolution behind the GEMM, per group (ifmap addresses repeat across windows; DRAM
    # traffic, hwsim.cost.memory); None: a GEMM, every ifmap word used by one row
    geometry: ConvGeometry | None = None

    def __post_init__(self):
        for k in ("Np", "K", "Mf", "groups", "samples"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise TopologyError(
                    f"layer {self.name!r}: {k} must be a positive integer, got {v!r}"
                )

    @property
    def macs(self) -> int:
        return self.Np * self.K * self.Mf * self.groups

    @property
    def filter_elems(self) -> int:
        return self.K * self.Mf * self.groups

    @property
    def ofmap_elems(self) -> int:
        return self.Np * self.Mf * self.groups


def _int(path, line, col, name, raw) -> int:
    try:
        f = float(raw)
    except ValueError:
        raise TopologyError(
            f"{path}:{line}: column {col} ({name}) must be an integer, got {raw!r}"
        ) from None
    if f != int(f) or f < 1:
        raise TopologyError(
            f"{path}:{line}: column {col} ({name}) must be a positive integer, got {raw!r}"
        )
    return int(f)


CONV_FIELDS = (
    "IFMAP Height",
    "IFMAP Width",
    "Filter Height",
    "Filter Width",
    "Channels",
    "Num Filter",
    "Strides",
)
GEMM_FIELDS = ("M", "N", "K")


def conv_layer(
    name, ifmap_h, ifmap_w, filt_h, filt_w, channels, num_filter, stride, where: str = ""
) -> Layer:
    """A SCALE-Sim convolution row as a Layer (padding already in the ifmap size)."""
    if filt_h > ifmap_h or filt_w > ifmap_w:
        raise TopologyError(
            f"{where}layer {name!r}: filter {filt_h}x{filt_w} is larger than "
            f"the (padded) ifmap {ifmap_h}x{ifmap_w}"
        )
    oh = math.ceil((ifmap_h - filt_h + stride) / stride)
    ow = math.ceil((ifmap_w - filt_w + stride) / stride)
    return Layer(
        name,
        oh * ow,
        filt_h * filt_w * channels,
        num_filter,
        ifmap_elems=ifmap_h * ifmap_w * channels,
        geometry=ConvGeometry(ifmap_h, ifmap_w, filt_h, filt_w, channels, stride),
    )


def read_topology(path: str | os.PathLike) -> list[Layer]:
    """Layers of a SCALE-Sim topology CSV (conv or GEMM format)."""
    path = Path(path)
    if not path.is_file():
        raise TopologyError(f"{path}: no such topology file")
    with open(path, newline="") as f:
        rows = [[c.strip() for c in r] for r in csv.reader(f)]
    numbered = [(i + 1, [c for c in r if c != ""]) for i, r in enumerate(rows)]
    numbered = [(i, r) for i, r in numbered if r]
    if len(numbered) < 2:
        raise TopologyError(f"{path}: expected a header line and at least one layer row")
    (_, header), body = numbered[0], numbered[1:]
    if len(header) == 1 + len(CONV_FIELDS):
        fields, kind = CONV_FIELDS, "conv"
    elif len(header) == 1 + len(GEMM_FIELDS):
        fields, kind = GEMM_FIELDS, "gemm"
    else:
        raise TopologyError(
            f"{path}:{numbered[0][0]}: header has {len(header)} fields; a conv topology has 8 "
            f"(Layer name, {', '.join(CONV_FIELDS)}) and a GEMM topology 4 (Layer Name, M, N, K)"
        )
    layers = []
    for line, r in body:
        if len(r) != 1 + len(fields):
            raise TopologyError(
                f"{path}:{line}: expected {1 + len(fields)} fields "
                f"(Layer name, {', '.join(fields)}), got {len(r)}"
            )
        vals = [_int(path, line, j + 2, fields[j], r[j + 1]) for j in range(len(fields))]
        if kind == "conv":
            layers.append(conv_layer(r[0], *vals, where=f"{path}:{line}: "))
        else:
            M, N, K = vals
            layers.append(Layer(r[0], M, K, N, ifmap_elems=M * K))
    return layers


@dataclass(frozen=True)
class TokenStructure:
    """What the executor does with a per-token program, from the shapes: ``rows`` per-token
    tensor -> tokens per sample (its scale array's size); ``along_k`` per-token tensors whose
    tokens lie on a matmul's summed axis (scale not size 1 on axis -2); ``islands`` nodes run
    as float islands; ``wide`` tensors handed to an integer non-linearity at accumulator
    width (no range unit)."""

    rows: dict
    along_k: frozenset
    islands: frozenset
    wide: frozenset


def token_structure(program) -> TokenStructure | None:
    """:class:`TokenStructure` of a program with per-token activations (else None), from one
    integer run of a zero sample with float non-linearities (per-token scale shapes and the
    float islands follow from the shapes alone, and a zero sample's degenerate steps are no
    input for I-BERT's kernels); the hand-off to integer kernels from the program itself
    (:func:`hwsim.execute.integer.wide_tensors`)."""
    if isinstance(program, Graph) or not any(s.per_token for s in program.acts.values()):
        return None
    import dataclasses

    from hwsim.execute import IntegerExecutor, QTensor
    from hwsim.execute.integer import wide_tensors
    from hwsim.quant.scheme import NonLinear

    def floatnl(ls):
        return dataclasses.replace(ls, nonlinear=NonLinear.FLOAT)

    prog = dataclasses.replace(
        program,
        layers={k: floatnl(v) for k, v in program.layers.items()},
        default_layer=floatnl(program.default_layer),
    )
    g = program.graph
    shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in g.input_shape)
    ex = IntegerExecutor(prog)
    env = ex.run(np.zeros((1, *shape), np.dtype(g.input_dtype)))
    per_token = {t: v for t, v in env.items() if isinstance(v, QTensor) and v.per_token}
    return TokenStructure(
        rows={t: int(np.size(v.scale)) for t, v in per_token.items()},
        along_k=frozenset(t for t, v in per_token.items() if np.shape(v.scale)[-2] > 1),
        islands=frozenset(ex.float_ops),
        wide=frozenset(wide_tensors(program)),
    )


def layers_from_program(program, batch: int = 1) -> list[Layer]:
    """The MAC layers of a QuantProgram (or a float Graph: the accelerator's default widths),
    with the shapes inferred on the IR (:func:`hwsim.graph.shapes.infer_shapes`).

    A dense on an N-d input ``(N, ..., K)`` is one GEMM of ``N * prod(...)`` rows. A MatMul of
    two activations ``(N, ..., M, K) @ (N, ..., K, P)`` has no weights: it is ``N * prod(...)``
    GEMMs (``groups``; attention heads of each sample) of ``M x K`` by ``K x P``, its second
    operand counted as the "filter" (``wbits``: that operand's width)."""
    graph: Graph = program if isinstance(program, Graph) else program.graph
    shapes = infer_shapes(graph, 1)
    quant = not isinstance(program, Graph)
    ts = token_structure(program) if quant else None
    tok = ts.rows if ts is not None else {}
    if quant:
        from hwsim.execute.integer import wide_tensors

        wide = ts.wide if ts is not None else frozenset(wide_tensors(program))
    else:
        wide = frozenset()
    layers = []
    for n in graph.nodes:
        if n.op in MATMUL_OPS:
            layers.append(_matmul_layer(program, n, shapes, batch, quant, ts, wide))
            continue
        if n.op not in MAC_OPS:
            continue
        x = shapes[n.inputs[0]]
        y = shapes[n.output]
        if n.op is Op.CONV:
            g = n.attrs["group"]
            Np = int(np.prod(y[2:])) * batch
            K = int(np.prod(n.weight.shape[1:]))
            Mf = n.weight.shape[0] // g
        else:
            rows = int(np.prod(x[1:-1])) if n.attrs.get("nd") else 1
            g, Np, K, Mf = 1, batch * rows, n.weight.shape[1], n.weight.shape[0]
        kw = {}
        if n.op is Op.CONV:
            kw["geometry"] = _conv_geometry(n, x, g)
        if quant:
            spec_in = program.acts.get(n.inputs[0])
            spec_out = program.acts.get(n.output)
            ls = program.layer(n.name)
            kw.update(
                wbits=n.wq.fmt.bits if n.wq is not None else None,
                abits=spec_in.fmt.bits if spec_in else None,
                acc_bits=ls.acc.bits,
                out_bits=spec_out.fmt.bits if spec_out else None,
                register=ls.register.value,
                scale_registers=n.weight.shape[0] if (n.wq is not None and n.wq.per_channel) else 1,
                act_mode=spec_out.mode if spec_out else "static",
                s_max=spec_out.s_max if spec_out else 0,
                shift_base=spec_out.base if spec_out else "static",
                in_mode=spec_in.mode if spec_in else "static",
                bias=n.bias is not None,
                align=bool(
                    n.wq is not None
                    and np.ndim(n.wq.scale)
                    and np.any(np.asarray(n.wq.scale) != np.max(n.wq.scale))
                ),
                # a per-token input: its tokens are the GEMM's samples (rows of ranges and
                # bias registers); a per-token output of a sample input: its tokens
                rows_in=batch * tok[n.inputs[0]] if n.inputs[0] in tok else 0,
                rows_out=batch * tok.get(n.inputs[0], tok.get(n.output, 0)),
            )
            if ts is not None and n.name in ts.islands:  # a float island: no scheme ops
                kw.update(act_mode="static", in_mode="static", align=False, bias=False)
            elif n.output in wide:  # no range unit: handed over wide
                kw.update(act_mode="static", align=False)
        layers.append(
            Layer(
                n.name,
                Np,
                K,
                Mf,
                groups=g,
                ifmap_elems=int(np.prod(x[1:])) * batch,
                samples=batch,
                **kw,
            )
        )
    return layers


def _conv_geometry(n, x, groups: int) -> ConvGeometry | None:
    """A 2-d Conv node as SCALE-Sim addresses it (per group): the padded ifmap trimmed to
    what the windows reach, ``(out - 1) * stride + filt``, so that SCALE-Sim's ``ceil`` gives
    the node's output size; None where SCALE-Sim has no such layer (dilation, unequal strides,
    not 2-d): its DRAM traffic is then a GEMM's."""
    a = n.attrs
    if len(x) != 4 or len(n.weight.shape) != 4:
        return None
    (kh, kw), (sh, sw) = n.weight.shape[2:], a["strides"]
    if tuple(a["dilations"]) != (1, 1) or sh != sw:
        return None
    pt, pl, pb, pr = a["pads"]
    oh = (x[2] + pt + pb - kh) // sh + 1
    ow = (x[3] + pl + pr - kw) // sw + 1
    return ConvGeometry((oh - 1) * sh + kh, (ow - 1) * sw + kw, kh, kw, x[1] // groups, sh)


def _matmul_layer(program, n, shapes, batch: int, quant: bool, ts=None, wide=frozenset()) -> Layer:
    """A MatMul of two activations as ``groups`` GEMMs (see :func:`layers_from_program`)."""
    a, b = shapes[n.inputs[0]], shapes[n.output]
    M, K, P = a[-2], a[-1], b[-1]
    groups = batch * int(np.prod(b[1:-2]))
    kw = {}
    if quant:
        specs = [program.acts.get(t) for t in (*n.inputs, n.output)]
        ls = program.layer(n.name)
        kw = dict(
            abits=specs[0].fmt.bits if specs[0] else None,
            wbits=specs[1].fmt.bits if specs[1] else None,
            acc_bits=ls.acc.bits,
            out_bits=specs[2].fmt.bits if specs[2] else None,
            register=ls.register.value,
            act_mode=specs[2].mode if specs[2] else "static",
            s_max=specs[2].s_max if specs[2] else 0,
            shift_base=specs[2].base if specs[2] else "static",
            in_mode=specs[0].mode if specs[0] else "static",
        )
        tok = ts.rows if ts is not None else {}
        if ts is not None and n.name in ts.islands:  # a float island: no scheme ops
            kw.update(act_mode="static", in_mode="static")
        elif n.output in wide:  # handed over wide: no range unit
            kw.update(act_mode="static")
        else:
            if n.output in tok:  # a per-token output, aligned per row where b has token scales
                kw.update(rows_out=batch * tok[n.output], align=n.inputs[1] in tok)
            if ts is not None and n.inputs[1] in ts.along_k:
                if specs[1].mode == "shift":
                    kw["token_shifts"] = groups * M * P * K
                else:
                    kw["token_aligns"] = groups * K * P
    return Layer(
        n.name,
        M,
        K,
        P,
        groups=groups,
        ifmap_elems=int(np.prod(a[1:])) * batch,
        samples=batch,
        extra={"operands": "activations"},
        **kw,
    )
