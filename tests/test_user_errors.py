"""User errors found in the issue-13 review that used to escape as plain ValueError /
TypeError (a traceback now that only HwsimError is a clean CLI error), and the W4 file that
`run --isa avx2` refused."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

from hwsim.cli import main
from hwsim.errors import HwsimError
from hwsim.graph import ModelImportError, import_model
from hwsim.quant import Scheme, SchemeError


def test_avx2_run_of_a_file_onnxruntime_cannot_load(tmp_path):
    """A 4-bit data-free file hwsim wrote: onnxruntime cannot load it (int4 weights), so there
    is no fused plan -- hwsim's own hardware, eq. 16 on every eligible layer, as in memory."""
    out = tmp_path / "df.onnx"
    r = CliRunner().invoke(main, ["quantize", "models/mlp.onnx", "--scheme", "data-free",
                                  "--wbits", "4", "--input-range", "0,16", "-o", str(out)])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(main, ["run", str(out), "--data", "digits", "--isa", "avx2"])
    assert r.exit_code == 0, r.output
    assert "top-1" in r.output


def test_scheme_preset_names_an_unknown_field():
    with pytest.raises(SchemeError, match=r"unknown scheme field\(s\) \['wbit'\]; fields: .*wbits"):
        Scheme.preset("per-tensor", wbit=8)
    with pytest.raises(SchemeError, match="first_last_bits"):
        Scheme.preset("per-tensor", first_last_bits=40)


def test_dense_weight_that_does_not_fit_its_input_is_an_import_error(tmp_path):
    w = numpy_helper.from_array(np.ones((4, 5), np.float32), "w")  # expects 5 features
    g = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "w"], ["y"], name="fc", transB=1)],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [w],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 13)]), path)
    with pytest.raises(ModelImportError, match=r"node 'fc' \(dense\): input has 6 features .* 5"):
        import_model(path)


def test_bad_energy_figure_in_a_config_is_a_config_error(tmp_path):
    from hwsim.cost import ConfigError, load_config

    cfg = tmp_path / "a.toml"
    cfg.write_text("[energy]\ndram_pj_per_bit = -1\n")
    with pytest.raises(ConfigError, match="dram_pj_per_bit"):
        load_config(cfg)


def test_negative_seed_is_a_user_error():
    from hwsim.data import load_data
    from hwsim.execute import IntegerExecutor, run_float
    from hwsim.quant import quantize

    p = quantize(import_model("models/mlp.onnx"), Scheme.preset("per-tensor"),
                 load_data("digits-train"), float_run=run_float)
    with pytest.raises(HwsimError, match="seed must be a non-negative int"):
        IntegerExecutor(p, seed=-1)
