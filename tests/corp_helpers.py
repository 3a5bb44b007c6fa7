"""Shared pieces of the corp tests: tiny models and a weight-space task with a planted direction."""

from __future__ import annotations

import numpy as np
import torch

from corp.evaluate import Scores
from corp.tasks import Example

PLANTED_PARAM = "model.layers.0.mlp.up_proj.weight"


def records_with_rewards(rewards, sigma: float = 0.01, first_seed: int = 1):
    """A population log's records with the given mean train rewards, seeds first_seed, +1, ..."""
    from corp.method.population import Record
    return [Record(seed=first_seed + i, sigma=sigma, reward=r, accuracy=r, rewards=[r],
                   correct=[r >= 1]) for i, r in enumerate(rewards)]


def reward_scores(rewards) -> Scores:
    """Scores of per-example rewards (correct = reward >= 1, no parsed answers)."""
    r = np.asarray(rewards, float)
    return Scores(r, r >= 1, [None] * len(r))


class PlantedTask:
    """Weight-space task: example e is solved when the projection of the current update of one
    layer on a planted unit rank-1 direction P, in units of `scale`, exceeds the example's
    threshold. With `harmful=True` any move along P (either sign) breaks examples instead, so no
    member can help."""

    def __init__(self, model, scale: float, n: int = 48, seed: int = 0, harmful: bool = False):
        self.param = dict(model.named_parameters())[PLANTED_PARAM]
        self.base = self.param.detach().clone()
        g = torch.Generator().manual_seed(seed)
        u = torch.randn(self.param.shape[0], 1, generator=g, dtype=torch.float64)
        v = torch.randn(1, self.param.shape[1], generator=g, dtype=torch.float64)
        self.direction = (u @ v) / (u.norm() * v.norm())
        self.scale, self.harmful = scale, harmful
        rng = np.random.default_rng(seed)
        low, high = (0.2, 2.0) if harmful else (-0.5, 3.0)
        self.splits_ = {split: [Example(f"{split}{i}", "1", {"t": float(t)})
                                for i, t in enumerate(rng.uniform(low, high, n))]
                        for split in ("train", "val", "test")}
        self.forward_calls = 1

    def splits(self):
        return self.splits_

    def projection(self) -> float:
        delta = self.param.detach().double() - self.base.double()
        return float((delta * self.direction).sum()) / self.scale

    def __call__(self, model, examples) -> Scores:
        proj = self.projection()
        t = np.array([e.meta["t"] for e in examples])
        ok = (proj ** 2 < t) if self.harmful else (proj > t)
        return Scores(ok.astype(float), ok, [str(int(o)) for o in ok])
