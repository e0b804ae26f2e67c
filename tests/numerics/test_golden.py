"""Golden vectors asserted by the references' own unit tests (traces/reference_golden.json:
TFLite quantization_util_test.cc, ruy apply_multiplier_test.cc)."""

import json
from pathlib import Path

import pytest

from hwsim.numerics import multiply_by_quantized_multiplier, quantize_multiplier

GOLDEN = json.loads((Path(__file__).parents[2] / "traces" / "reference_golden.json").read_text())


def _real(v):
    return float(v)


@pytest.mark.parametrize("case", GOLDEN["quantize_multiplier"], ids=lambda c: str(c["real"]))
def test_quantize_multiplier_goldens(case):
    builds = ["double", "single"] if case["build"] == "both" else [case["build"]]
    for b in builds:
        assert quantize_multiplier(_real(case["real"]), b) == (case["multiplier"], case["shift"])


INT32_CASES = [
    c for c in GOLDEN["multiply_by_quantized_multiplier"] if c.get("x_type", "int32") == "int32"
]


@pytest.mark.parametrize(
    "case", INT32_CASES, ids=lambda c: f"{c['x']},{c['multiplier']},{c['shift']},{c['rounding']}"
)
def test_multiply_by_quantized_multiplier_goldens(case):
    got = multiply_by_quantized_multiplier(
        case["x"], case["multiplier"], case["shift"], case["rounding"]
    )
    assert got == case["expected"]


def test_golden_file_is_not_empty():
    assert len(GOLDEN["quantize_multiplier"]) >= 10 and len(INT32_CASES) >= 20
