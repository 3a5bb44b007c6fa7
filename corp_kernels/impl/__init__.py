"""Backend implementations of the corp_kernels ops.

Each module exposes the same functions with the same (already validated) arguments:
`torch_ref` (the oracle, every device), `cpp` (C++/OpenMP, CPU), `triton` (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1), `cuda` (the CUDA extension). `corp_kernels.dispatch` picks one.
Seeds and offsets arrive as int64 carrying unsigned 64-bit bits.
"""
