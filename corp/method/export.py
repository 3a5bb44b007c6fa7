"""Writing the consolidated update: low-rank factors per layer, a PEFT LoRA adapter, merged
Hugging Face checkpoints.

Each 2-D parameter's update Delta = sum_j c_j eps(key(seed_j, name)) is factored by the streaming
randomized SVD (corp_kernels.randomized_svd_noise; Delta is materialized only when it fits
`memory_budget_bytes`). The rank is the smallest r <= max_rank whose singular values capture
`energy_fraction` of |Delta|^2, the exact energy coming from noise_gram. A merged update of
near-orthogonal noises has a flat spectrum, so this rank is often high and the captured energy is
reported per layer; the reward cost of truncation is measured by evaluating both models.

LoRA convention: W' = W + B @ A with lora_B = U sqrt(S) [out, r], lora_A = sqrt(S) V^T [r, in],
lora_alpha = r per module (PEFT's scaling alpha / r = 1).

The rank is chosen by reward, not by a default (choose_rank): the exact update and its factors
truncated to a few ranks are scored on the probe split, and the smallest rank whose reward is not
worse than the exact update's at the gate's confidence (paired upper bound of the loss >= 0)
is kept; a truncation may also score better, since it removes noise. When no rank qualifies the
export is the exact update (merged), and the result says so. The captured energy is only
reported: for a merge of near-orthogonal noises rank 32 kept 13-33% of it on SmolLM2's layers,
which says little about what the truncation costs in reward.

The writers here write into a fresh folder; the commands stage these folders beside their targets
and replace a run folder's adapter and merged checkpoints as a whole (corp.outputs).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch

import corp_kernels as ck

from .perturb import Member, Perturber, parameter_key

# What a consolidation writes into a run folder; each command commits its set as one run and
# retires the ones it does not write (corp.outputs.Commit). `consolidate --streaming` leaves
# consolidation.json alone (it is often its --update); `consolidate` and `experiment` own it all.
EXPORT_ARTIFACTS = ("adapter", "merged-lowrank", "merged-exact")
STREAMING_ARTIFACTS = ("consolidation-streaming.json", *EXPORT_ARTIFACTS)
CONSOLIDATION_ARTIFACTS = ("consolidation.json", *STREAMING_ARTIFACTS)


@dataclass
class LayerFactors:
    name: str  # parameter name, e.g. model.layers.0.mlp.up_proj.weight
    lora_b: torch.Tensor  # [out, r]
    lora_a: torch.Tensor  # [r, in]
    energy_captured: float  # fraction of |Delta|^2 in the kept rank
    # |Delta|^2 per kept singular direction / |Delta|^2 (exact): for truncating further
    energy_per_direction: np.ndarray | None = None

    @property
    def rank(self) -> int:
        return int(self.lora_a.shape[0])

    def truncated(self, rank: int) -> "LayerFactors":
        """The top `rank` directions (factors come sorted by singular value)."""
        r = min(rank, self.rank)
        per = self.energy_per_direction
        energy = float(per[:r].sum()) if per is not None else float("nan")
        return LayerFactors(self.name, self.lora_b[:, :r].contiguous(),
                            self.lora_a[:r].contiguous(), energy,
                            None if per is None else per[:r])


def low_rank_factors(perturber: Perturber, update: Member, max_rank: int = 64,
                     energy_fraction: float = 0.9, power_iters: int = 2,
                     memory_budget_bytes: int | None = 256 << 20) -> list[LayerFactors]:
    # 1-D parameters have no low-rank form; the merged checkpoint has them
    return [layer_factors(name, tuple(p.shape), update, max_rank, energy_fraction, power_iters,
                          memory_budget_bytes)
            for name, p in perturber.params if p.dim() == 2]


def layer_factors(name: str, shape: tuple[int, int], update: Member, max_rank: int = 64,
                  energy_fraction: float | None = 0.9, power_iters: int = 2,
                  memory_budget_bytes: int | None = 256 << 20) -> LayerFactors:
    """One parameter's factors, from its name and shape only (the weights are not needed).
    `energy_fraction=None` keeps exactly min(max_rank, *shape) and skips the exact-energy pass
    (the noise Gram); the factors' energy is then NaN."""
    if energy_fraction is not None and not 0 < energy_fraction <= 1:
        raise ValueError(f"energy_fraction must be in (0, 1], got {energy_fraction}")
    keys = [parameter_key(s, name) for s in update.seeds]
    rank = min(max_rank, *shape)
    u, s, v = ck.randomized_svd_noise(shape, keys, list(update.coeffs), rank,
                                      power_iters=power_iters,
                                      memory_budget_bytes=memory_budget_bytes)
    if energy_fraction is None:
        r, energy, per = rank, float("nan"), None
    else:
        total = float(ck.noise_gram(shape, keys, update.coeffs).sum())
        per = s.double().square().numpy() / max(total, 1e-300)
        cum = np.cumsum(per)
        r = int(np.searchsorted(cum, energy_fraction - 1e-12) + 1) if total > 0 else 1
        r = min(r, rank)
        energy = float(cum[r - 1])
        per = per[:r]
    root = s[:r].sqrt()
    return LayerFactors(name, (u[:, :r] * root).contiguous(),
                        (root[:, None] * v[:, :r].T).contiguous(), energy, per)


@dataclass
class RankChoice:
    rank: int | None  # None: no rank is within tolerance; export the exact update
    exact_probe_reward: float
    candidates: list[dict]  # per rank: probe reward, paired stats against the exact update
    reason: str

    def to_json(self) -> dict:
        return {"rank": self.rank, "exact_probe_reward": self.exact_probe_reward,
                "candidates": self.candidates, "reason": self.reason}


def candidate_ranks(max_rank: int) -> list[int]:
    """The ranks an export tries, smallest first: 4, 8, 16, ... below max_rank, and max_rank."""
    return sorted({r for r in (4, 8, 16, 32, 64, 128, 256) if r < max_rank} | {max_rank})


def choose_rank(perturber: Perturber, update: Member, factors: list[LayerFactors], score_probe,
                ranks, z: float = 1.0) -> RankChoice:
    """The smallest rank r in `ranks` whose truncated factors, merged into the model, score on the
    probe no worse than the exact update at confidence z: mean(low - exact) + z * SE >= 0 over
    paired per-example rewards (a better score always qualifies). `score_probe(model)` -> Scores.
    The model is left as it was."""
    from .consolidate import paired_stats
    ranks = sorted({int(r) for r in ranks})
    if not ranks or ranks[0] < 1:
        raise ValueError(f"ranks must be integers >= 1, got {ranks}")
    with perturber.inplace(update):
        exact = score_probe(perturber.model)
    candidates = []
    for r in ranks:
        if factors and r > max(f.rank for f in factors):
            break  # the factors hold no more directions than this
        truncated = [f.truncated(r) for f in factors]
        low = score_with_factors(perturber, truncated, score_probe)
        stats = paired_stats(low.rewards, exact.rewards, z)
        # not worse at confidence z; one example (infinite SE): its difference decides
        upper = stats["mean_diff"] + z * stats["se"] if np.isfinite(stats["se"]) else \
            stats["mean_diff"]
        ok = bool(upper >= 0)
        candidates.append({"rank": r, "probe_reward": low.reward, "paired": stats,
                           "within_tolerance": ok,
                           "energy_captured": [f.energy_captured for f in truncated]})
        if ok:
            return RankChoice(r, exact.reward, candidates,
                              f"rank {r}: probe reward {low.reward:.4f} vs exact "
                              f"{exact.reward:.4f}, within the gate's tolerance (z = {z})")
    return RankChoice(None, exact.reward, candidates,
                      f"no rank in {ranks} scored within the gate's tolerance (z = {z}) of the "
                      f"exact update on the probe ({exact.reward:.4f}): the export is the exact "
                      "update")


def score_with_factors(perturber: Perturber, factors: list[LayerFactors], score):
    """score(model) with the factors merged into the perturber's model, which is then restored
    exactly from its backup."""
    perturber._take_backup()
    try:
        apply_factors_(perturber.model, factors)
        return score(perturber.model)
    finally:
        perturber.restore_()


@torch.no_grad()
def apply_factors_(model: torch.nn.Module, factors: list[LayerFactors]) -> None:
    params = dict(model.named_parameters())
    for f in factors:
        p = params[f.name]
        p.copy_((p.float() + f.lora_b.float() @ f.lora_a.float()).to(p.dtype))


def module_name(param_name: str) -> str:
    return param_name.rsplit(".", 1)[0]


def write_adapter(directory: str, factors: list[LayerFactors], base_model: str) -> str:
    """A PEFT LoRA adapter (adapter_model.safetensors + adapter_config.json) in `directory`,
    which must be new or empty (an earlier adapter's files would be read with the new ones)."""
    from safetensors.torch import save_file
    if not factors:
        raise ValueError("no 2-D parameter has an update: nothing to write as a LoRA adapter")
    if os.path.isdir(directory) and os.listdir(directory):
        raise ValueError(f"{directory} is not empty: write_adapter writes a fresh folder")
    os.makedirs(directory, exist_ok=True)
    tensors, ranks = {}, {}
    for f in factors:
        mod = module_name(f.name)
        tensors[f"base_model.model.{mod}.lora_A.weight"] = f.lora_a.float().contiguous()
        tensors[f"base_model.model.{mod}.lora_B.weight"] = f.lora_b.float().contiguous()
        ranks[mod] = int(f.lora_a.shape[0])
    save_file(tensors, os.path.join(directory, "adapter_model.safetensors"))
    r = max(ranks.values())
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": r, "rank_pattern": ranks, "alpha_pattern": dict(ranks),
        "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None,
    }
    with open(os.path.join(directory, "adapter_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return directory
