"""Split-half analysis: is the useful variance of a rewarded population reproducible, and low-rank?

The population is split into two fixed random halves of n_h members. Two spaces are tested.

Weight space, per 2-D layer (m x n). Each half's reward-weighted update
Delta_h = sum_i c_i eps_i, c_i = sigma_i (r_i - mean_h r) / n_h, and its top-r left singular
subspace U_h. Statistic: overlap |U_1^T U_2|_F^2 / r (chance r / m).
Null: rewards permuted across members (rewards unrelated to the noise), the halves kept.

Example space. The members x examples reward-change matrix (member minus base model, per train
example). Examples that never vary are dropped; each half is centred over its members and each
example divided by its standard deviation in the half, so that no example dominates a subspace
merely by varying more than the others. Statistic: the overlap of the halves' top-r example
subspaces (r at most a quarter of the varying examples, so that chance r / p leaves room above it).
Null: each example's column permuted across members on its own. That keeps every example's
spread (and, for 0/1 rewards, its success rate) and breaks only the correlation between examples,
which is the structure in question. (The previous null shuffled each member's row across examples;
that destroys the per-example variance profile, so a population of independent prompts, some
constant, came out "structured" in 40 of 40 runs.)

The test. p = (1 + #{null >= observed}) / (1 + P) over P permutations (exact for a permutation
test; ties count against the observation). P is at least 200 and at least m / alpha - 1 for a
family of m rows, so that the smallest attainable p can pass the correction. The rows of one
analysis (every layer and the example space) form one family, corrected by Holm (family-wise
error <= alpha, the default) or Benjamini-Hochberg (false-discovery rate <= alpha).
"Reproducible" = adjusted p <= alpha. Rows that could not have shown an effect of any size
(min effect >= 1 below, a function of N and the layer shape only, fixed before any reward is
looked at) are reported with their p but left out of the family and never declared: they would
only dilute the correction for the rows that can.

Low rank. "Reproducible" only says rewards are linked to the noise (or examples to each other); a
full-rank link passes too. Beside it, the low-rank share
    g_r = <A_1^(r), A_2^(r)> / <A_1, A_2>,
where A_h is the half's signal estimate (weight space: Delta_h; example space: the off-diagonal
part of the half's example correlation matrix, i.e. what the null removes) and A^(r) its best rank-r
approximation. The halves' noises are independent, so the denominator estimates the energy of the
signal both halves share and the numerator the part of it carried by rank-r approximations: g_r
is near 1 when r directions carry the reproducible signal. It is compared with g_r of a
full-rank signal of the same strength: an isotropic Gaussian matrix (symmetric for the example
space) with energy <A_1, A_2>, plus noise of each half's measured level, simulated P times; p_low
= (1 + #{reference >= observed}) / (1 + P). "Low rank" = reproducible and p_low, corrected over
the reproducible rows the same way, <= alpha. (A Gaussian 48 x 32 matrix already has stable rank
~10: this asks whether the structure is more concentrated than a random one of its size, which is
what "low-rank structure" claims; overlap alone cannot tell. In the example space the Gaussian
reference is an approximation: of planted full-rank correlation structures on 16 prompts found
reproducible, 3/34 (Gaussian data) and 0/18 (0/1 data) were called low rank.)

Power (the table's "min effect", the spiked-matrix phase transition; below it the halves' top-r
subspaces carry asymptotically no information about a planted direction, so no split-half test of
them can detect it):
- weight space: a planted rank-1 direction u v^T with corr(reward, <eps_i, u v^T>) = rho gives
  Delta_h = theta u v^T + noise with theta / noise-sd = rho sqrt(n_h) (equal sigmas), visible
  when that exceeds (m n)^(1/4): rho_min = (m n)^(1/4) / sqrt(n_h); rank r: each of r directions.
  rho_min >= 1: no effect of any size can be detected at this N and layer shape. Measured on a
  48 x 32 layer, N = 600, r = 4, 20 planted populations each: p <= 0.05 in 0/20 at 0.5 rho_min,
  2/20 at rho_min, 13/20 at 1.5 rho_min (and every run at 2.5 rho_min): a bound, not 80% power.
- example space: one planted common factor explaining a share lambda^2 of each of p examples'
  standardized variance gives a correlation spike p lambda^2 / (1 - lambda^2), visible above
  sqrt(p / n_h) (Baik-Ben Arous-Peche): lambda^2_min = s / (p + s), s = sqrt(p / n_h). Measured
  with 5 examples and 100 members (r = 1), 20 Gaussian populations each: p <= 0.05 in 3/20 at
  lambda^2 = 0.06 (~lambda^2_min), 9/20 at 0.12, 18/20 at 0.2, 20/20 at 0.3.
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

import corp_kernels as ck

from .perturb import Perturber, parameter_key
from .population import Record

log = logging.getLogger("corp")

MIN_PERMUTATIONS = 200  # p >= 1/201: below Holm's smallest threshold only for families <= 10
CORRECTIONS = ("holm", "bh")
TIE_TOLERANCE = 1e-9  # null values this close to the observation count as ties (against it)
EXACT_SVD_MAX_SIDE = 128  # Gram + eigh on the smaller side up to this; randomized above it
SKETCH_OVERSAMPLE, SKETCH_POWER_ITERS, SKETCH_SEED = 8, 4, 20261126
DEFAULT_MEMORY_BYTES = 512 << 20  # stacked noise + per-permutation sums of one layer


@dataclass
class OverlapRow:
    space: str  # "weight" or "example"
    name: str  # layer name, or "examples"
    rank: int
    dims: tuple[int, ...]  # layer shape, or (varying examples, all examples)
    members_per_half: int
    overlap: float
    null_mean: float
    null_q95: float  # 95th percentile of the null overlaps
    chance: float
    p_value: float  # nan: untestable (constant rewards, fewer than 2 varying examples)
    permutations: int
    min_effect: float  # power: rho_min (weight) or lambda^2_min (example); see the module doc
    low_rank_share: float  # g_r; nan when the halves share no signal energy
    full_rank_share: float = float("nan")  # median g_r of the full-rank reference (if tested)
    p_low_rank: float = float("nan")  # nan: not tested (not reproducible)
    p_adjusted: float = float("nan")
    p_low_rank_adjusted: float = float("nan")
    correction: str = "holm"
    alpha: float = 0.05
    family_size: int = 1
    # what the full-rank reference needs: (shape, symmetric, shared energy, noise var 1, 2)
    _reference: tuple | None = field(default=None, repr=False, compare=False)

    @property
    def testable(self) -> bool:
        return not math.isnan(self.p_value)

    @property
    def reproducible(self) -> bool:
        return self.testable and self.p_adjusted <= self.alpha

    @property
    def low_rank(self) -> bool:
        return self.reproducible and self.p_low_rank_adjusted <= self.alpha

    @property
    def structured(self) -> bool:
        """The paper's claim for this row: reproducible AND low-rank."""
        return self.low_rank

    @property
    def powered(self) -> bool:
        """False when no planted effect of any size could be detected at this N and shape."""
        return self.min_effect < 1

    @property
    def verdict(self) -> str:
        if not self.testable:
            return "untestable"
        if self.reproducible:
            return "reproducible, low rank" if self.low_rank else "reproducible, not low rank"
        return "no" if self.powered else "no (could not have shown it at this N)"

    def to_json(self) -> dict:
        out = {k: v for k, v in self.__dict__.items() if not k.startswith("_")}
        out.update(reproducible=self.reproducible, low_rank=self.low_rank,
                   structured=self.structured, powered=self.powered, verdict=self.verdict)
        return out

    @classmethod
    def from_json(cls, obj: dict) -> "OverlapRow":
        """A finished row back from `to_json` (its verdicts are recomputed from its numbers; the
        full-rank reference's inputs are not kept: `correct` has already used them)."""
        names = [f for f in cls.__dataclass_fields__ if not f.startswith("_")]
        row = cls(**{k: obj[k] for k in names if k in obj})
        row.dims = tuple(row.dims)
        return row


def subspace_overlap(a, b) -> float:
    """|A^T B|_F^2 / r for orthonormal bases A [d, r], B [d, r'] (r = the smaller rank)."""
    a, b = torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b))
    return float(_overlaps(a[None], b[None])[0])


def _overlaps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    r = min(a.shape[-1], b.shape[-1])
    return torch.linalg.matrix_norm(a.transpose(-1, -2) @ b).square() / r


def _halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(f"corp-split-half-{seed}").shuffle(order)
    return sorted(order[:n // 2]), sorted(order[n // 2:2 * (n // 2)])


def permutation_p(observed: float, null: np.ndarray) -> float:
    """Exact permutation p-value (1 + #{null >= observed}) / (1 + len(null))."""
    exceed = np.sum(np.asarray(null) >= observed - TIE_TOLERANCE * max(1.0, abs(observed)))
    return float((1 + exceed) / (1 + len(null)))


def adjust(p_values: Sequence[float], method: str = "holm") -> np.ndarray:
    """Holm (step-down, family-wise error) or Benjamini-Hochberg (step-up, false-discovery rate)
    adjusted p-values; nan entries are not part of the family and stay nan."""
    if method not in CORRECTIONS:
        raise ValueError(f"correction must be one of {CORRECTIONS}, got {method!r}")
    p = np.asarray(p_values, dtype=float)
    out = np.full_like(p, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    if m == 0:
        return out
    order = idx[np.argsort(p[idx], kind="stable")]
    ranked = p[order]
    if method == "holm":
        adj = np.maximum.accumulate(ranked * (m - np.arange(m)))
    else:
        adj = np.minimum.accumulate((ranked * m / np.arange(1, m + 1))[::-1])[::-1]
    out[order] = np.minimum(adj, 1.0)
    return out


# -- top-r subspaces and the low-rank share ------------------------------------------------------

def _top_left_subspace(a: torch.Tensor, r: int) -> torch.Tensor:
    """Orthonormal bases [B, m, r] of the top-r left singular subspaces of a batch [B, m, n].

    Small sides: eigh of the Gram on the smaller side, in float64 (402 Grams of 48 x 32 in 55 ms
    against 176 ms for torch's batched SVD). Larger: randomized subspace iteration with a fixed
    sketch, so that the observation and every permutation go through the same function (what the
    permutation test needs); on flat spectra it approximates the top-r subspace, which is itself
    then ill-determined."""
    m, n = a.shape[-2:]
    if min(m, n) <= EXACT_SVD_MAX_SIDE:
        a = a.double()
        if m <= n:
            return torch.linalg.eigh(a @ a.transpose(-1, -2))[1][..., -r:].flip(-1)
        v = torch.linalg.eigh(a.transpose(-1, -2) @ a)[1][..., -r:].flip(-1)
        return torch.linalg.qr(a @ v)[0]
    k = min(r + SKETCH_OVERSAMPLE, m, n)
    g = torch.Generator().manual_seed(SKETCH_SEED)
    y = a @ torch.randn(n, k, generator=g, dtype=a.dtype)
    for _ in range(SKETCH_POWER_ITERS):
        q = torch.linalg.qr(y)[0]
        y = a @ (a.transpose(-1, -2) @ q)
    q = torch.linalg.qr(y)[0]
    small = (q.transpose(-1, -2) @ a).double()
    return q.double() @ torch.linalg.svd(small, full_matrices=False)[0][..., :r]


def _low_rank_shares(a1: torch.Tensor, a2: torch.Tensor, r: int) -> tuple[np.ndarray, ...]:
    """(g_r, shared energy <A_1, A_2>, noise variance per entry of A_1 and of A_2) for batches."""
    u1, u2 = _top_left_subspace(a1, r), _top_left_subspace(a2, r)
    a1, a2 = a1.double(), a2.double()
    p1, p2 = u1.transpose(-1, -2) @ a1, u2.transpose(-1, -2) @ a2  # rank-r parts, coordinates
    top = ((p1.transpose(-1, -2) @ (u1.transpose(-1, -2) @ u2)) * p2.transpose(-1, -2)) \
        .sum((-1, -2))
    shared = (a1 * a2).sum((-1, -2))
    entries = a1.shape[-1] * a1.shape[-2]
    noise1 = ((a1.square().sum((-1, -2)) - shared) / entries).clamp_min(0)
    noise2 = ((a2.square().sum((-1, -2)) - shared) / entries).clamp_min(0)
    share = torch.where(shared > 0, top / shared, torch.full_like(shared, float("nan")))
    return share.numpy(), shared.numpy(), noise1.numpy(), noise2.numpy()


def _full_rank_reference(shape, symmetric: bool, energy: float, noise1: float, noise2: float,
                         rank: int, draws: int, seed: int,
                         memory_bytes: int = DEFAULT_MEMORY_BYTES) -> np.ndarray:
    """g_r of `draws` full-rank signals of the given shared energy: isotropic Gaussian (symmetric
    with a zero diagonal for the example space), plus each half's noise level."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    chunk = max(1, memory_bytes // (6 * 4 * m * n))
    shares = []

    def gaussian(b):
        x = torch.randn(b, m, n, generator=g)
        if symmetric:
            x = (x + x.transpose(-1, -2)) / math.sqrt(2)
            x.diagonal(dim1=-2, dim2=-1).zero_()
        return x

    done = 0
    while done < draws:
        b = min(chunk, draws - done)
        signal = gaussian(b)
        signal *= torch.sqrt(energy / signal.square().sum((-1, -2), keepdim=True))
        a1 = signal + math.sqrt(noise1) * gaussian(b)
        a2 = signal + math.sqrt(noise2) * gaussian(b)
        shares.append(_low_rank_shares(a1, a2, rank)[0])
        done += b
    return np.concatenate(shares)


# -- weight space --------------------------------------------------------------------------------

def _weighted_sums(shape, keys: Sequence[int], coeffs: np.ndarray, memory_bytes: int):
    """Yield coeffs[j] @ [eps(key) for key in keys] reshaped to `shape`, for chunks of rows j.

    The members' noises are stacked once when they fit half the budget (then every chunk is one
    matrix product); otherwise they are regenerated in blocks for every chunk, so memory stays at
    the budget whatever the layer size and N."""
    numel = math.prod(shape)
    per = 4 * numel
    block = max(1, min(len(keys), memory_bytes // 2 // per))
    rows_per_chunk = max(1, memory_bytes // 4 // per)
    stacked = None
    if block == len(keys):
        stacked = torch.stack([ck.gaussian_noise((numel,), k) for k in keys])
    c = torch.from_numpy(np.ascontiguousarray(coeffs, dtype=np.float32))
    for start in range(0, len(c), rows_per_chunk):
        part = c[start:start + rows_per_chunk]
        if stacked is not None:
            acc = part @ stacked
        else:
            acc = torch.zeros(len(part), numel)
            for b in range(0, len(keys), block):
                noise = torch.stack([ck.gaussian_noise((numel,), k) for k in keys[b:b + block]])
                acc += part[:, b:b + block] @ noise
        yield acc.view(len(part), *shape)


def weight_min_effect(shape, members_per_half: int) -> float:
    """rho_min = (m n)^(1/4) / sqrt(n_h): see the module doc."""
    return math.prod(shape) ** 0.25 / math.sqrt(members_per_half)


def weight_space_row(name: str, shape, seeds: Sequence[int], sigmas: np.ndarray,
                     rewards: np.ndarray, halves, rank: int, permutations: int, seed: int = 0,
                     memory_bytes: int = DEFAULT_MEMORY_BYTES) -> OverlapRow:
    """One layer's split-half test (unadjusted p); noise regenerated from the members' seeds."""
    m, n = shape
    r = min(rank, m, n)
    h1, h2 = (np.asarray(h) for h in halves)
    n_h = len(h1)
    rewards = np.asarray(rewards, dtype=float)
    sigmas = np.asarray(sigmas, dtype=float)
    min_effect = weight_min_effect(shape, n_h)
    common = dict(space="weight", name=name, rank=r, dims=(m, n), members_per_half=n_h,
                  chance=r / m, permutations=permutations, min_effect=min_effect)
    if np.ptp(rewards) == 0:
        nan = float("nan")
        return OverlapRow(overlap=nan, null_mean=nan, null_q95=nan, p_value=nan,
                          low_rank_share=nan, **common)
    rng = np.random.default_rng([seed, 1])
    perms = np.vstack([np.arange(len(rewards)),
                       np.argsort(rng.random((permutations, len(rewards))), axis=1)])
    permuted = rewards[perms]  # row 0: the observation

    def coeffs(h):
        w = permuted[:, h]
        return (w - w.mean(axis=1, keepdims=True)) / len(h) * sigmas[h]

    keys1 = [parameter_key(int(seeds[i]), name) for i in h1]
    keys2 = [parameter_key(int(seeds[i]), name) for i in h2]
    overlaps, observed = [], None
    for d1, d2 in zip(_weighted_sums(shape, keys1, coeffs(h1), memory_bytes // 2),
                      _weighted_sums(shape, keys2, coeffs(h2), memory_bytes // 2)):
        if observed is None:
            observed = (d1[:1].clone(), d2[:1].clone())
        overlaps.append(_overlaps(_top_left_subspace(d1, r), _top_left_subspace(d2, r)).numpy())
    overlaps = np.concatenate(overlaps)
    share, energy, v1, v2 = (float(x[0]) for x in _low_rank_shares(*observed, r))
    return OverlapRow(overlap=float(overlaps[0]), null_mean=float(overlaps[1:].mean()),
                      null_q95=float(np.quantile(overlaps[1:], 0.95)),
                      p_value=permutation_p(overlaps[0], overlaps[1:]), low_rank_share=share,
                      _reference=((m, n), False, energy, v1, v2), **common)


# -- example space -------------------------------------------------------------------------------

def example_space_row(change: np.ndarray, halves, rank: int, permutations: int,
                      seed: int = 0) -> OverlapRow:
    """The example-space split-half test (unadjusted p) of a members x examples matrix."""
    change = np.asarray(change, dtype=float)
    z = change[:, change.std(axis=0) > 0]  # examples no member changes carry no information
    n_members, p = z.shape
    h1, h2 = (np.asarray(h) for h in halves)
    n_h = len(h1)
    # r at most a quarter of the varying examples: near r = p the overlap only asks whether the
    # few left-out directions reproduce (r = p - 1: it lies in [(r - 1) / r, 1]). With 5 varying
    # prompts and 100 members, a common factor with lambda^2 = 0.3 gave p <= 0.05 in 3/20 runs at
    # r = 4 and in 20/20 at r = 1.
    r = max(1, min(rank, p // 4, n_h - 1))
    s = math.sqrt(max(p, 1) / n_h)
    common = dict(space="example", name="examples", rank=r, dims=(p, change.shape[1]),
                  members_per_half=n_h, chance=r / max(p, 1), permutations=permutations,
                  min_effect=s / (max(p, 1) + s))
    if p < 2 or n_h < 2:
        nan = float("nan")
        return OverlapRow(overlap=nan, null_mean=nan, null_q95=nan, p_value=nan,
                          low_rank_share=nan, **common)
    rng = np.random.default_rng([seed, 2])
    # each example's column permuted on its own: [P, members, examples] member indices
    idx = np.argsort(rng.random((permutations, n_members, p)), axis=1)
    stack = np.concatenate([z[None], np.take_along_axis(z[None], idx, axis=1)])
    t = torch.from_numpy(stack)

    def half(h):
        # standardized within the half (a correlation matrix): with a pooled sd, an example that
        # one member of 100 changes is a single huge entry in one half and dominates its top
        # direction (math: 2 of 5 varying prompts are like that)
        x = t[:, h, :]
        x = x - x.mean(dim=1, keepdim=True)
        sd = x.square().mean(dim=1, keepdim=True).sqrt()
        return torch.where(sd > 0, x / sd.clamp_min(1e-300), torch.zeros_like(x))

    x1, x2 = half(h1), half(h2)
    overlaps = _overlaps(_top_left_subspace(x1.transpose(1, 2), r),
                         _top_left_subspace(x2.transpose(1, 2), r)).numpy()

    def between(x):  # off-diagonal covariance of the observed half: what the null removes
        cov = x[0].T @ x[0] / (len(x[0]) - 1)
        return (cov - torch.diag(torch.diag(cov)))[None]

    share, energy, v1, v2 = (float(v[0]) for v in _low_rank_shares(between(x1), between(x2), r))
    # noise level per off-diagonal entry: the diagonal is zero in the reference too
    v1, v2 = v1 * p / (p - 1), v2 * p / (p - 1)
    return OverlapRow(overlap=float(overlaps[0]), null_mean=float(overlaps[1:].mean()),
                      null_q95=float(np.quantile(overlaps[1:], 0.95)),
                      p_value=permutation_p(overlaps[0], overlaps[1:]), low_rank_share=share,
                      _reference=((p, p), True, energy, v1, v2), **common)


# -- the family ----------------------------------------------------------------------------------

def permutations_for(family_size: int, alpha: float, requested: int = MIN_PERMUTATIONS) -> int:
    """At least `requested` (>= 200) and enough that 1 / (1 + P) <= alpha / family_size, the
    smallest threshold of Holm and of BH: with fewer, no row could ever be declared."""
    return max(requested, MIN_PERMUTATIONS, math.ceil(family_size / alpha) - 1)


def correct(rows: list[OverlapRow], alpha: float = 0.05, correction: str = "holm",
            seed: int = 0, memory_bytes: int = DEFAULT_MEMORY_BYTES) -> list[OverlapRow]:
    """Adjust the p-values of the rows that could show an effect (min effect < 1) as one family,
    then test low rank on the reproducible rows only (and adjust those p-values over them): low
    rank is asked only of a signal that is there."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    adjusted = adjust([row.p_value if row.powered else float("nan") for row in rows],
                      correction)
    family = int(np.sum(~np.isnan(adjusted)))
    for row, p in zip(rows, adjusted):
        row.p_adjusted, row.correction, row.alpha, row.family_size = float(p), correction, \
            alpha, family
    for i, row in enumerate(rows):
        if row.reproducible and row._reference is not None and row._reference[2] > 0:
            shape, symmetric, energy, v1, v2 = row._reference
            reference = _full_rank_reference(shape, symmetric, energy, v1, v2, row.rank,
                                             row.permutations, seed * 7919 + i,  # per row
                                             memory_bytes)
            row.full_rank_share = float(np.median(reference))
            row.p_low_rank = permutation_p(row.low_rank_share, reference)
        elif row.reproducible:
            row.p_low_rank = 1.0  # overlap reproduces but no shared energy: nothing to concentrate
    for row, p in zip(rows, adjust([row.p_low_rank for row in rows], correction)):
        row.p_low_rank_adjusted = float(p)
    return rows


def split_half(perturber: Perturber, records: Sequence[Record], base_rewards: np.ndarray,
               rank: int = 4, permutations: int = MIN_PERMUTATIONS, seed: int = 0,
               layers: Sequence[str] | None = None, alpha: float = 0.05,
               correction: str = "holm",
               memory_bytes: int = DEFAULT_MEMORY_BYTES) -> list[OverlapRow]:
    """Every chosen 2-D layer and the example space, as one corrected family."""
    if len(records) < 4:
        raise ValueError(f"split-half analysis needs at least 4 members, got {len(records)}")
    if permutations < MIN_PERMUTATIONS:
        raise ValueError(f"permutations must be >= {MIN_PERMUTATIONS} (p >= 1/(1+P)), got "
                         f"{permutations}")
    chosen = [(name, tuple(p.shape)) for name, p in perturber.params
              if p.dim() == 2 and (layers is None or name in layers)]
    n_half = len(records) // 2
    family = 1 + sum(weight_min_effect(shape, n_half) < 1 for _, shape in chosen)
    n_perm = permutations_for(family, alpha, permutations)
    if n_perm > permutations:
        log.info("split-half: %d permutations (not %d) so that a %s correction over %d rows can "
                 "reject at alpha %.3g", n_perm, permutations, correction, family, alpha)
    seeds = [r.seed for r in records]
    sigmas = np.array([r.sigma for r in records])
    rewards = np.array([r.reward for r in records])
    halves = _halves(len(records), seed)
    rows = [weight_space_row(name, shape, seeds, sigmas, rewards, halves, rank, n_perm, seed,
                             memory_bytes) for name, shape in chosen]
    change = np.array([r.rewards for r in records]) - np.asarray(base_rewards)[None, :]
    rows.append(example_space_row(change, halves, rank, n_perm, seed))
    return correct(rows, alpha, correction, seed, memory_bytes)


# -- report --------------------------------------------------------------------------------------

def _fmt(x: float, digits: int = 3) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _fmt_p(x: float) -> str:
    return "—" if math.isnan(x) else (f"{x:.3f}" if x >= 0.001 else f"{x:.1e}")


def table(rows: Sequence[OverlapRow], legend: bool = True) -> str:
    names = {"holm": "Holm", "bh": "BH"}
    corr = "/".join(sorted({names[r.correction] for r in rows})) or "Holm"
    lines = [f"| space | layer | r | overlap | null mean (95th pct) | p | p adj ({corr}) | "
             f"reproducible | low-rank share (full-rank ref.) | p low-rank adj | low rank | "
             f"min effect | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lr = "—" if math.isnan(row.p_low_rank_adjusted) else ("yes" if row.low_rank else "no")
        effect = (f"ρ ≥ {row.min_effect:.2f}" if row.space == "weight"
                  else f"λ² ≥ {row.min_effect:.3f}")
        name = row.name if row.space == "weight" else \
            f"{row.name} ({row.dims[0]} of {row.dims[1]} vary)"
        lines.append(
            f"| {row.space} | {name} | {row.rank} | {_fmt(row.overlap)} | "
            f"{_fmt(row.null_mean)} ({_fmt(row.null_q95)}) | {_fmt_p(row.p_value)} | "
            f"{_fmt_p(row.p_adjusted)} | {'yes' if row.reproducible else 'no'} | "
            f"{_fmt(row.low_rank_share)} ({_fmt(row.full_rank_share)}) | "
            f"{_fmt_p(row.p_low_rank_adjusted)} | {lr} | {effect} | {row.verdict} |")
    if not legend or not rows:
        return "\n".join(lines)
    r0 = rows[0]
    lines += ["", f"p: permutation p-value, {r0.permutations} permutations (weight space: "
              "rewards permuted across members; example space: each example's column permuted "
              f"across members). p adj: {corr} over the {r0.family_size} rows of one analysis "
              "that could show an effect (per task in an experiment; rows with ρ ≥ 1 are left "
              f"out: —); reproducible = p adj <= {r0.alpha}. r: the analysis rank, at most a "
              "quarter of the varying examples in the example space. Low-rank share: the part "
              "of the halves' shared signal energy carried by their rank-r approximations (a "
              "ratio of two estimates: where nothing is reproducible it is noise and may fall "
              "outside [0, 1]); full-rank ref.: its median for an isotropic Gaussian signal of "
              "the same strength and noise; tested only where reproducible (p adj over those "
              "rows). Min effect (power): smallest planted effect the split halves can detect "
              "at this N and shape; weight space: correlation ρ between reward and a member's "
              "noise along each of r planted directions, (m n)^(1/4)/sqrt(members per half), "
              "ρ ≥ 1 means no effect of any size; example space: share λ² of each varying "
              "example's reward-change variance explained by a planted common factor."]
    return "\n".join(lines)


def figure(rows: Sequence[OverlapRow], path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(max(7, 0.6 * len(rows) + 3), 6.5),
                                      sharex=True)
    x = np.arange(len(rows))
    # log scale: weight-space overlaps sit near r/m (~0.007 for 576 rows), example space near 1
    top.bar(x - 0.2, [r.overlap for r in rows], 0.4, label="observed halves")
    top.bar(x + 0.2, [r.null_mean for r in rows], 0.4, color="tab:gray",
            yerr=[np.zeros(len(rows)), [r.null_q95 - r.null_mean for r in rows]],
            label="null mean (bar: 95th pct)")
    top.scatter(x, [r.chance for r in rows], marker="_", color="k", s=200, label="chance r/dim",
                zorder=3)
    for i, r in enumerate(rows):
        if r.testable:
            text = (f"p adj {_fmt_p(r.p_adjusted)}" + (" *" if r.reproducible else "")
                    if r.powered else f"p {_fmt_p(r.p_value)}\n(powerless)")
            top.annotate(text,
                         (i, max(r.overlap, r.null_q95) * 1.15), ha="center", va="bottom",
                         fontsize=6)
    top.set_yscale("log")
    top.set_ylabel("top-r subspace overlap")
    correction = {"holm": "Holm", "bh": "BH"}.get(rows[0].correction, "") if rows else ""
    top.set_title(f"Split-half reproducibility (permutation p, {correction}-adjusted) and "
                  "low-rank share", fontsize=9)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    tested = [not math.isnan(r.p_low_rank) for r in rows]
    bottom.bar(x - 0.2, [r.low_rank_share if t else 0 for r, t in zip(rows, tested)], 0.4,
               color="tab:green", label="low-rank share g_r")
    bottom.bar(x + 0.2, [r.full_rank_share if t else 0 for r, t in zip(rows, tested)], 0.4,
               color="tab:olive", label="full-rank signal, same strength")
    for i, (r, t) in enumerate(zip(rows, tested)):
        if not t:
            bottom.annotate("not tested:\nnot reproducible", (i, 0.5), ha="center",
                            va="center", fontsize=6, color="tab:gray", rotation=90)
    bottom.set_ylim(0, 1.1)
    bottom.set_ylabel("share of shared energy in rank r")
    bottom.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    labels = [f"{r.name.replace('model.layers.', 'L').replace('.weight', '')}\n"
              f"min effect {'ρ' if r.space == 'weight' else 'λ²'} {r.min_effect:.2g}"
              for r in rows]
    bottom.set_xticks(x, labels, rotation=70, ha="right", fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
