"""hwsim: bit-exact emulation of quantized neural networks on integer hardware."""

__version__ = "0.1.0"
