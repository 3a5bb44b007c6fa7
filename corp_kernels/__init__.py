"""corp_kernels: seeded Gaussian noise kernels for Consolidating Rewarded Perturbations.

Noise is never stored: eps(seed) is regenerated wherever it is needed, the same on every backend.
`backends()` tells which backends are available here and why (not).
"""

from .dispatch import backends
from .ops import (
    add_noise_,
    gaussian_noise,
    noise_gram,
    noise_sketch,
    perturbed_linear,
    philox4x32_10,
    population_linear,
    weighted_noise_sum,
)
from .rsvd import randomized_svd_noise

__all__ = [
    "add_noise_",
    "backends",
    "gaussian_noise",
    "noise_gram",
    "noise_sketch",
    "perturbed_linear",
    "philox4x32_10",
    "population_linear",
    "randomized_svd_noise",
    "weighted_noise_sum",
]
__version__ = "0.1.0"
