"""hwsim.qops.run_node: the one table from ``(domain, op_type)`` to the operator functions."""

from __future__ import annotations

import pytest

from hwsim import qops


def test_run_node_rejects_unknown_ops_listing_the_supported_ones():
    with pytest.raises(ValueError, match=r"QLinearSigmoid.*supported:.*QLinearConv"):
        qops.run_node("QLinearSigmoid", "com.microsoft", {}, [])
    assert ("", "QuantizeLinear") in qops.SUPPORTED
