"""Exact-sum engines: ways to compute ``sum_k (x - zx)(w - zw)`` exactly, and when each is exact.

Every engine returns the exact int64 sums, so the choice never changes a result, only its speed.

* ``ort``: onnxruntime ``MatMulInteger`` (uint8 x int8/uint8, int32 accumulation). Exact when
  both operands are at most 8 bits and ``K * max|x-zx| * max|w-zw| < 2^31``; a signed 8-bit
  ``x`` is fed as ``x + 128`` with zero point ``zx + 128``. On first use each weight type is
  checked against int64 on all-max operands: uint8 x int8 is exact with AVX-512 VNNI /
  AVX-VNNI / AMX but not with plain AVX2 (``vpmaddubsw`` int16 pair saturation, eq. 16), where
  int8 weights are fed to the exact uint8 x uint8 kernels (``vpmaddwd``) as ``w + 128`` with
  zero point ``zw + 128``. If neither type is exact the engine is off, and hwsim says so once
  on stderr.
* ``float32`` / ``float64``: BLAS on K-chunks small enough that every partial sum of a chunk is
  at most ``2^24`` / ``2^53`` in magnitude, where every float operation is exact whatever order
  BLAS sums in; chunk results are added in int64.
* ``numba``: an int64 kernel (``K * max|p| < 2^63``, checked by the caller's width limits).
"""

from __future__ import annotations

import functools

import numpy as np

from hwsim.datapath.kernels import int64_gemm

ENGINES = ("auto", "ort", "float32", "float64", "numba")
_F32_EXACT = 1 << 24
_F64_EXACT = 1 << 53
_MIN_CHUNK = 256


@functools.cache
def _ort_session(b_dtype: str):
    import numba
    from onnx import TensorProto, helper

    from hwsim.runtime import cpu_session

    bt = TensorProto.INT8 if b_dtype == "int8" else TensorProto.UINT8
    inputs = [
        helper.make_tensor_value_info("A", TensorProto.UINT8, ["G", "M", "K"]),
        helper.make_tensor_value_info("B", bt, ["G", "K", "N"]),
        helper.make_tensor_value_info("az", TensorProto.UINT8, []),
        helper.make_tensor_value_info("bz", bt, ["G", 1, "N"]),
    ]
    out = helper.make_tensor_value_info("Y", TensorProto.INT32, ["G", "M", "N"])
    node = helper.make_node("MatMulInteger", ["A", "B", "az", "bz"], ["Y"])
    model = helper.make_model(
        helper.make_graph([node], "hwsim_matmul_integer", inputs, [out]),
        opset_imports=[helper.make_opsetid("", 13)],
    )
    model.ir_version = 8
    return cpu_session(model, threads=numba.config.NUMBA_NUM_THREADS)


def _ort_run(a_u8, az, b, bz):
    sess = _ort_session(str(b.dtype))
    feeds = {"A": a_u8, "B": b, "az": np.asarray(az, np.uint8), "bz": bz}
    return sess.run(None, feeds)[0]


@functools.cache
def ort_exact(b_dtype: str) -> bool:
    """True if onnxruntime is installed and its uint8 x ``b_dtype`` matmul is exact on all-max
    operands on this CPU (checked once per weight type)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    rng = np.random.default_rng(0)
    K = 1024
    b_vals, bz = {"int8": ((-128, 127), (0, -128, 127)), "uint8": ((0, 255), (0, 255))}[b_dtype]
    for av in (0, 255):
        for bv in b_vals:
            for zb in bz:
                a = np.full((1, 3, K), av, np.uint8)
                a[0, 2] = rng.integers(0, 256, K)
                b = np.full((1, K, 4), bv, b_dtype)
                b[0, :, 3] = rng.integers(b_vals[0], b_vals[1] + 1, K)
                for az in (0, 255):
                    bzv = np.full((1, 1, 4), zb, b_dtype)
                    got = _ort_run(a, az, b, bzv)
                    want = (a.astype(np.int64) - az) @ (b.astype(np.int64) - zb)
                    if not np.array_equal(got, want):
                        return False
    return True


@functools.cache
def ort_available() -> bool:
    """True if onnxruntime's uint8 x uint8 matmul is exact on this CPU: then every 8-bit
    operand pair has an exact path (int8 weights go to the uint8 kernels shifted by 128 where
    uint8 x int8 is not exact)."""
    ok = ort_exact("uint8")
    if not ok:
        import sys

        try:
            import onnxruntime  # noqa: F401

            why = "its integer matmul is not exact on this CPU"
        except ImportError:
            why = "onnxruntime is not installed"
        print(
            f"hwsim: no fast exact 8-bit engine ({why}); exact sums use chunked float BLAS "
            "and Numba, several times slower",
            file=sys.stderr,
        )
    return ok


def _effective(q: np.ndarray, zp) -> np.ndarray:
    return q.astype(np.int64) - np.asarray(zp, np.int64)


def max_abs_effective(q: np.ndarray, zp) -> int:
    """``max |q - zp|`` over the array (0 when empty), without an int64 copy for scalar zp."""
    if q.size == 0:
        return 0
    if np.ndim(zp) == 0:
        zp = int(zp)
        return max(abs(int(q.max()) - zp), abs(int(q.min()) - zp))
    return int(np.max(np.abs(_effective(q, zp))))


def _blas_chunked(xe, we, exact_limit, dtype, max_prod):
    K = xe.shape[2]
    if max_prod > exact_limit:
        raise ValueError(
            f"engine '{np.dtype(dtype).name}' cannot hold a single product of {max_prod}"
        )
    chunk = K if max_prod == 0 else max(1, min(K, exact_limit // max_prod))
    out = None
    for k0 in range(0, max(K, 1), chunk):
        part = np.matmul(
            xe[:, :, k0 : k0 + chunk].astype(dtype), we[:, k0 : k0 + chunk].astype(dtype)
        )
        part = part.astype(np.int64)
        out = part if out is None else out + part
    return out


def choose_engine(x_bits: int, w_bits: int, K: int, max_x: int, max_w: int) -> str:
    """The fastest exact engine for operands of these widths and data maxima."""
    bound = K * max_x * max_w
    if x_bits <= 8 and w_bits <= 8 and bound < (1 << 31) and ort_available():
        return "ort"
    if max_x * max_w == 0 or _F32_EXACT // (max_x * max_w) >= min(K, _MIN_CHUNK):
        return "float32"
    if _F64_EXACT // (max_x * max_w) >= min(K, _MIN_CHUNK):
        return "float64"
    return "numba"


def exact_sums(
    x,
    w,
    x_zp,
    w_zp,
    x_fmt,
    w_fmt,
    engine: str = "auto",
    max_x: int | None = None,
    max_w: int | None = None,
) -> np.ndarray:
    """Exact ``(x - x_zp) @ (w - w_zp)``, batched: ``x`` (G, M, K), ``w`` (G, K, N), ``x_zp``
    scalar, ``w_zp`` scalar or (G, 1, N). Operands must already be validated against their
    formats ``x_fmt`` / ``w_fmt``; ``max_x`` / ``max_w`` may pass a known ``max |x - x_zp|`` /
    ``max |w - w_zp|``. The result is int64, or int32 from the ``ort`` engine (whose sums are
    proved to fit)."""
    G, M, K = x.shape
    N = w.shape[2]
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    if max_x is None:
        max_x = max_abs_effective(x, x_zp)
    if max_w is None:
        max_w = max_abs_effective(w, w_zp)
    if engine == "auto":
        engine = choose_engine(x_fmt.bits, w_fmt.bits, K, max_x, max_w)
    if G * M * N == 0 or K == 0:
        return np.zeros((G, M, N), np.int64)
    if engine == "ort":
        if not (x_fmt.bits <= 8 and w_fmt.bits <= 8 and K * max_x * max_w < (1 << 31)):
            raise ValueError("engine 'ort' needs operands of at most 8 bits and K*|x|*|w| < 2^31")
        if not ort_available():
            raise ValueError("engine 'ort' is unavailable (onnxruntime missing or not exact here)")
        if x_fmt.signed:
            a = x.astype(np.int8, copy=False).view(np.uint8) ^ np.uint8(0x80)
            az = int(x_zp) + 128
        else:
            a, az = x.astype(np.uint8, copy=False), int(x_zp)
        if w_fmt.signed and not ort_exact("int8"):  # AVX2: the exact u8 x u8 kernels
            b = w.astype(np.int8, copy=False).view(np.uint8) ^ np.uint8(0x80)
            bz = np.broadcast_to((np.asarray(w_zp, np.int64) + 128).astype(np.uint8), (G, 1, N))
        else:
            bdt = np.int8 if w_fmt.signed else np.uint8
            b = w.astype(bdt, copy=False)
            bz = np.broadcast_to(np.asarray(w_zp, bdt), (G, 1, N))
        return _ort_run(
            np.ascontiguousarray(a), az, np.ascontiguousarray(b), np.ascontiguousarray(bz)
        )
    xe = _effective(x, x_zp)
    we = _effective(w, w_zp)
    if engine == "float32":
        return _blas_chunked(xe, we, _F32_EXACT, np.float32, max_x * max_w)
    if engine == "float64":
        return _blas_chunked(xe, we, _F64_EXACT, np.float64, max_x * max_w)
    out = np.empty((G, M, N), np.int64)
    int64_gemm(xe, we, out)
    return out
