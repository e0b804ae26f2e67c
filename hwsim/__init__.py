"""hwsim: bit-exact emulation of quantized neural networks on integer hardware."""

import os

# OpenBLAS's worker threads otherwise spin for a long time after each float matmul of the
# float reference and starve the Numba / onnxruntime kernels that follow (up to 7x slower
# `hwsim run` on 2 cores); a short spin timeout leaves every result identical. Only takes
# effect if numpy is not imported yet; a user's own setting wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

__version__ = "0.1.0"
