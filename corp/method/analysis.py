"""Split-half analysis: is the useful variance of a rewarded population reproducible and low-rank?

The population is split into two random halves. In each half:
- weight space, per 2-D layer: the reward-weighted update Delta_h = sum_i w_i sigma_i eps_i with
  w_i = (r_i - mean_h r) / n_h (centred rewards: the direction rewards point to), and its top-r left
  singular subspace U_h from the streaming randomized SVD;
- example space: the members x examples reward-change matrix R_h (member reward minus the base
  model's, per train example), centred over members, and its top-r right singular subspace.
Overlap of two r-dim subspaces = |U_1^T U_2|_F^2 / r, in [0, 1]; chance is about r / dim.
Null: the same statistic with the rewards shuffled across members (weight space) or each member's
row shuffled across examples (example space), over `null_draws` draws. Structure is reported when
the observed overlap exceeds the null mean by more than 2 null standard deviations.

Power: a rank-1 direction in an m x n layer stands out of a half's noise only when
corr(reward, projection) * sqrt(members in the half) > (m n)^(1/4) (the spiked-matrix threshold):
for a 576 x 576 layer that is ~24, i.e. hundreds of members per half even for a strong
correlation. A "no" in weight space at small N is therefore weak evidence; the example-space
statistic needs far fewer members.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

import corp_kernels as ck

from .perturb import Perturber, parameter_key
from .population import Record


@dataclass
class OverlapRow:
    space: str  # "weight" or "example"
    name: str  # layer name, or "examples"
    rank: int
    overlap: float
    null_mean: float
    null_sd: float
    chance: float

    @property
    def structured(self) -> bool:
        return self.overlap > self.null_mean + 2 * max(self.null_sd, 1e-12)


def subspace_overlap(a: np.ndarray, b: np.ndarray) -> float:
    r = min(a.shape[1], b.shape[1])
    return float(np.linalg.norm(a.T @ b) ** 2 / r)


def _halves(n: int, seed: int) -> tuple[list[int], list[int]]:
    order = list(range(n))
    random.Random(f"corp-split-half-{seed}").shuffle(order)
    return sorted(order[:n // 2]), sorted(order[n // 2:2 * (n // 2)])


def _weight_subspace(shape, name, seeds, sigmas, rewards, rank):
    w = (rewards - rewards.mean()) / len(rewards) * sigmas
    if not np.any(w):
        return None
    keys = [parameter_key(int(s), name) for s in seeds]
    u, _, _ = ck.randomized_svd_noise(shape, keys, w.tolist(), rank, power_iters=2)
    return u.double().numpy()


def _example_subspace(matrix: np.ndarray, rank: int) -> np.ndarray:
    centred = matrix - matrix.mean(axis=0, keepdims=True)
    _, _, vh = np.linalg.svd(centred, full_matrices=False)
    return vh[:rank].T


def split_half(perturber: Perturber, records: Sequence[Record], base_rewards: np.ndarray,
               rank: int = 4, null_draws: int = 5, seed: int = 0,
               layers: Sequence[str] | None = None) -> list[OverlapRow]:
    if len(records) < 4:
        raise ValueError(f"split-half analysis needs at least 4 members, got {len(records)}")
    seeds = np.array([r.seed for r in records], dtype=object)
    sigmas = np.array([r.sigma for r in records])
    rewards = np.array([r.reward for r in records])
    h1, h2 = _halves(len(records), seed)
    rng = np.random.default_rng(seed)
    rows = []
    for name, p in perturber.params:
        if p.dim() != 2 or (layers is not None and name not in layers):
            continue
        shape = tuple(p.shape)
        r = min(rank, *shape)

        def overlap(rw):
            a = _weight_subspace(shape, name, seeds[h1], sigmas[h1], rw[h1], r)
            b = _weight_subspace(shape, name, seeds[h2], sigmas[h2], rw[h2], r)
            return float("nan") if a is None or b is None else subspace_overlap(a, b)
        null = [overlap(rng.permutation(rewards)) for _ in range(null_draws)]
        rows.append(OverlapRow("weight", name, r, overlap(rewards), float(np.nanmean(null)),
                               float(np.nanstd(null)), r / shape[0]))
    change = np.array([r.rewards for r in records]) - base_rewards[None, :]
    r = min(rank, len(h1), change.shape[1])

    def ex_overlap(mat):
        return subspace_overlap(_example_subspace(mat[h1], r), _example_subspace(mat[h2], r))
    null = [ex_overlap(np.array([rng.permutation(row) for row in change]))
            for _ in range(null_draws)]
    rows.append(OverlapRow("example", "examples", r, ex_overlap(change), float(np.mean(null)),
                           float(np.std(null)), r / change.shape[1]))
    return rows


def table(rows: Sequence[OverlapRow]) -> str:
    lines = ["| space | layer | r | overlap | null (mean ± sd) | chance | structure |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row.space} | {row.name} | {row.rank} | {row.overlap:.3f} | "
                     f"{row.null_mean:.3f} ± {row.null_sd:.3f} | {row.chance:.3f} | "
                     f"{'yes' if row.structured else 'no'} |")
    return "\n".join(lines)


def figure(rows: Sequence[OverlapRow], path: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r.overlap for r in rows], 0.4, label="observed halves")
    ax.bar(x + 0.2, [r.null_mean for r in rows], 0.4, yerr=[2 * r.null_sd for r in rows],
           label="null (shuffled), ±2 sd", color="tab:gray")
    ax.scatter(x, [r.chance for r in rows], marker="_", color="k", s=200, label="chance r/dim",
               zorder=3)
    labels = [r.name.replace("model.layers.", "L").replace(".weight", "") for r in rows]
    ax.set_xticks(x, labels, rotation=70, ha="right", fontsize=7)
    ax.set_ylabel("top-r subspace overlap")
    ax.set_title("Split-half reproducibility of the rewarded population")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
