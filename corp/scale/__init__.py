"""Scaling the method: population search across torchrun ranks (distributed) and consolidation
of a model that does not fit in memory, tensor by tensor from safetensors (streaming)."""

from .distributed import distributed_search, init_from_env
from .streaming import consolidate_streaming, parse_bytes, read_population, stage1_update

__all__ = ["consolidate_streaming", "distributed_search", "init_from_env", "parse_bytes",
           "read_population", "stage1_update"]
