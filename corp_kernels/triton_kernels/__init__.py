"""Triton kernels, one per file with its launcher beside it.

They run on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1 (which must be set before
triton is first imported; the tests do it in conftest.py).
"""
