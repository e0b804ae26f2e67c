"""quantize() returns a new program and never changes its input graph (issue 13): the same
imported graph quantized twice, with different schemes, gives the programs of two fresh
imports."""

from __future__ import annotations

import numpy as np

from hwsim.data import load_data
from hwsim.execute import IntegerExecutor, run_float
from hwsim.graph import import_model
from hwsim.quant import Scheme, quantize


def test_quantize_leaves_the_graph_alone():
    calib = load_data("digits-train")
    x = load_data("digits").x[:32]
    g = import_model("models/rescnn.onnx")
    before = [(n.wq, n.bias_q, dict(n.attrs), n.weight) for n in g.nodes]
    schemes = [Scheme.preset("per-channel", wbits=4), Scheme.preset("per-tensor", wbits=8)]
    progs = [quantize(g, s, calib, float_run=run_float) for s in schemes]
    assert not g.quantized
    for n, (wq, bq, attrs, w) in zip(g.nodes, before):
        assert n.wq is wq is None and n.bias_q is bq
        assert n.attrs.keys() == attrs.keys() and n.weight is w
    for s, p in zip(schemes, progs):
        fresh = quantize(import_model("models/rescnn.onnx"), s, calib, float_run=run_float)
        a, b = IntegerExecutor(p).run(x), IntegerExecutor(fresh).run(x)
        y = p.graph.output
        assert np.array_equal(a[y].q, b[y].q)
    assert progs[0].graph is not progs[1].graph
