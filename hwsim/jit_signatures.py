# ruff: noqa: E501
"""The Numba kernels ``hwsim demo`` uses, with their argument types, in the order of
first use: what :func:`hwsim.jitcache.warm` compiles on a fresh install. Written by
``python -m hwsim.jitrecord``; do not edit."""

SIGNATURES = [
    (
        "hwsim.datapath.kernels",
        "pad_nhwc",
        "(Array(int32, 4, 'C', False, aligned=True), int64, int64, int32, int64, Array(int32, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "im2col_nhwc",
        "(Array(float32, 4, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, int64, int64, int64, Array(float32, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "gmn_to_nchw",
        "(Array(float32, 3, 'C', False, aligned=True), int64, Array(float32, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.kernels",
        "quantize_static",
        "(Array(float32, 2, 'C', False, aligned=True), float32, float64, float64, int64, Array(uint8, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "depthwise_output_exact",
        "(Array(uint8, 4, 'C', False, aligned=True), int32, Array(int32, 3, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, Array(int64, 1, 'C', False, aligned=True), Array(float32, 1, 'C', False, aligned=True), int64, int64, int64, int64, int64, Array(uint8, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.partials",
        "conv_blocks",
        "(Array(uint8, 4, 'C', False, aligned=True), uint8, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, int64, Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(uint8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.partials",
        "scan_blocks",
        "(Array(int32, 3, 'C', False, aligned=True), bool, Array(uint8, 3, 'C', False, aligned=True), int64, Array(int64, 2, 'C', False, aligned=True), Array(int64, 2, 'C', False, aligned=True), Array(int64, 3, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(bool, 1, 'C', False, aligned=True), Array(bool, 1, 'C', False, aligned=True), int64, int64, Array(int64, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.sqnr",
        "sqnr_lane_sums",
        "(Array(float32, 2, 'C', False, aligned=True), Array(uint8, 2, 'C', False, aligned=True), int64, Array(float32, 1, 'C', False, aligned=True), Array(float64, 1, 'C', False, aligned=True), Array(float64, 1, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.kernels",
        "clamp_rows",
        "(Array(uint8, 2, 'C', False, aligned=True), int64, int64, Array(uint8, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "pad_nhwc",
        "(Array(uint8, 4, 'C', False, aligned=True), int64, int64, uint8, int64, Array(uint8, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "im2col_nhwc",
        "(Array(uint8, 4, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, int64, int64, int64, Array(uint8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "gmn_output_exact",
        "(Array(int32, 3, 'C', False, aligned=True), int64, Array(int64, 1, 'C', False, aligned=True), Array(float32, 1, 'C', False, aligned=True), int64, int64, int64, int64, int64, Array(uint8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "gmn_output_exact",
        "(Array(int32, 3, 'C', False, aligned=True), int64, Array(int64, 1, 'C', False, aligned=True), Array(float32, 1, 'C', False, aligned=True), int64, int64, int64, int64, int64, Array(int8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.sqnr",
        "sqnr_lane_sums",
        "(Array(float32, 2, 'C', False, aligned=True), Array(int8, 2, 'C', False, aligned=True), int64, Array(float32, 1, 'C', False, aligned=True), Array(float64, 1, 'C', False, aligned=True), Array(float64, 1, 'C', False, aligned=True))",
    ),
    (
        "hwsim.qops.kernels",
        "qlinear_add_rows",
        "(Array(uint8, 2, 'C', False, aligned=True), Array(uint8, 2, 'C', False, aligned=True), float32, float32, float32, int64, int64, Array(uint8, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.qops.kernels",
        "lookup_pairs",
        "(Array(uint8, 2, 'C', False, aligned=True), Array(uint8, 2, 'C', False, aligned=True), int64, Array(uint8, 1, 'C', True, aligned=True), Array(uint8, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.partials",
        "gather_blocks",
        "(Array(uint8, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int64, 2, 'C', False, aligned=True), uint8, Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(uint8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "output_ort_fused",
        "(Array(int64, 3, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), int64, int64, bool, int64, bool, Array(float32, 1, 'C', False, aligned=True), int64, int64, int64, Array(uint8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "depthwise_sums",
        "(Array(uint8, 4, 'C', False, aligned=True), int64, Array(int64, 3, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, Array(int64, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.sqnr",
        "sqnr_lane_sums",
        "(Array(float32, 2, 'C', False, aligned=True), Array(uint8, 2, 'C', False, aligned=True), int64, Array(float32, 1, 'C', True, aligned=True), Array(float64, 1, 'C', False, aligned=True), Array(float64, 1, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "gmn_to_nchw",
        "(Array(int32, 3, 'C', False, aligned=True), int64, Array(int64, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.sqnr",
        "sqnr_lane_sums",
        "(Array(float32, 2, 'C', False, aligned=True), Array(int8, 2, 'C', False, aligned=True), int64, Array(float32, 1, 'C', True, aligned=True), Array(float64, 1, 'C', False, aligned=True), Array(float64, 1, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.partials",
        "transpose_blocks",
        "(Array(uint8, 3, 'C', False, aligned=True), uint8, Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(uint8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.kernels",
        "quantize_static",
        "(Array(float32, 2, 'C', False, aligned=True), float32, float64, float64, int64, Array(int8, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "depthwise_output_exact",
        "(Array(int8, 4, 'C', False, aligned=True), int32, Array(int32, 3, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, Array(int64, 1, 'C', False, aligned=True), Array(float32, 1, 'C', False, aligned=True), int64, int64, int64, int64, int64, Array(int8, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.execute.kernels",
        "clamp_rows",
        "(Array(int8, 2, 'C', False, aligned=True), int64, int64, Array(int8, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "pad_nhwc",
        "(Array(int8, 4, 'C', False, aligned=True), int64, int64, int8, int64, Array(int8, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "im2col_nhwc",
        "(Array(int8, 4, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, int64, int64, int64, Array(int8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "depthwise_sums",
        "(Array(int8, 4, 'C', False, aligned=True), int64, Array(int64, 3, 'C', False, aligned=True), int64, int64, int64, int64, int64, int64, Array(int64, 4, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.ordered",
        "ordered_sat16",
        "(Array(uint8, 3, 'C', False, aligned=True), int64, Array(int16, 3, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int32, 3, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), int64, int16, Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int64, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "output_ort_fused",
        "(Array(int64, 3, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), int64, int64, bool, int64, bool, Array(float32, 1, 'C', False, aligned=True), int64, int64, int64, Array(int8, 3, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "row_abs_sums",
        "(Array(uint8, 3, 'C', False, aligned=True), int64, Array(int64, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.ordered",
        "ordered_sat32",
        "(Array(uint8, 3, 'C', False, aligned=True), int64, Array(int32, 3, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int64, 1, 'C', False, aligned=True), Array(int64, 2, 'C', False, aligned=True), int64, int32, int32, Array(int32, 3, 'C', False, aligned=True), Array(int64, 2, 'C', False, aligned=True))",
    ),
    (
        "hwsim.datapath.kernels",
        "gmn_to_nchw",
        "(Array(int64, 3, 'C', False, aligned=True), int64, Array(int64, 3, 'C', False, aligned=True))",
    ),
]
