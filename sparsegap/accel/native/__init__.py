"""Hand-written C++ kernels for the CPU, compiled on first use (``build.py``) and called through
ctypes. Each kernel has a torch twin that is used wherever the kernel cannot be (no compiler, no
AVX2, another device or dtype); the two agree to rounding (``tests/test_native.py``)."""
