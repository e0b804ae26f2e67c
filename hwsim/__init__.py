"""hwsim: bit-exact emulation of quantized neural networks on integer hardware."""

import os

# OpenBLAS's worker threads otherwise spin for a long time after each float matmul of the
# float reference and starve the Numba / onnxruntime kernels that follow (up to 7x slower
# `hwsim run` on 2 cores); a short spin timeout leaves every result identical. Only takes
# effect if numpy is not imported yet; a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# Numba's OpenMP workers sleep between parallel regions instead of spinning (libgomp reads
# this when Numba first loads it, at the first parallel kernel): the kernels alternate with
# onnxruntime's engine threads, which need those cores, and on a shared 2-core machine a
# spinning worker cost the executor 20x (resnet18-style, one core busy elsewhere: 669 ms ->
# 35 ms a batch); on an idle machine it costs about 6 us more per kernel launch. Results are
# identical either way; a value the user set is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"
