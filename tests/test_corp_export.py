"""The low-rank update as a PEFT LoRA adapter, and the split-half analysis."""

import json

import numpy as np
import pytest
import torch

from corp.method.analysis import figure, split_half, table
from corp.method.export import apply_factors_, low_rank_factors, write_adapter
from corp.models import build_tiny_model, save_model
from corp.method.perturb import Member, PerturbationSpec, Perturber, parameter_key
from corp.method.population import member_seeds, search
from corp_helpers import PLANTED_PARAM, PlantedTask

import corp_kernels as ck


def test_peft_adapter_gives_the_logits_of_the_merged_factors(tmp_path):
    peft = pytest.importorskip("peft")
    lm = build_tiny_model("llama", seed=1)
    pert = Perturber(lm.model, PerturbationSpec())
    update = Member((3, 4, 5), (0.02, -0.01, 0.03))
    factors = low_rank_factors(pert, update, max_rank=8, energy_fraction=0.5)
    assert all(1 <= f.lora_a.shape[0] <= 8 for f in factors)
    base_dir = tmp_path / "base"
    save_model(lm, str(base_dir))
    write_adapter(str(tmp_path / "adapter"), factors, str(base_dir))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and len(config["target_modules"]) == len(factors)

    ids = torch.randint(3, lm.codec.vocab_size, (2, 7), generator=torch.Generator().manual_seed(0))
    merged = build_tiny_model("llama", seed=1).model
    apply_factors_(merged, factors)
    with torch.no_grad():
        expected = merged(input_ids=ids).logits
        adapted = peft.PeftModel.from_pretrained(build_tiny_model("llama", seed=1).model,
                                                 str(tmp_path / "adapter")).eval()
        got = adapted(input_ids=ids).logits
        base = lm.model(input_ids=ids).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    assert (got - base).abs().max() > 1e-4  # the adapter is not a no-op


def test_rank_is_chosen_by_captured_energy():
    lm = build_tiny_model("llama")
    name = "model.layers.0.mlp.down_proj.weight"  # [64, 128]
    pert = Perturber(lm.model, PerturbationSpec(parameters=(name,)))
    update = Member(tuple(range(1, 31)), tuple([0.01] * 30))
    full = low_rank_factors(pert, update, max_rank=64, energy_fraction=1.0)[0]
    part = low_rank_factors(pert, update, max_rank=64, energy_fraction=0.5)[0]
    assert full.lora_a.shape[0] == 64 and full.energy_captured > 0.999
    assert part.lora_a.shape[0] < 64 and 0.5 <= part.energy_captured < 0.6
    # the truncated factors reproduce the exact update's top singular directions
    keys = [parameter_key(s, name) for s in update.seeds]
    delta = ck.weighted_noise_sum((64, 128), keys, list(update.coeffs)).double()
    r = part.lora_a.shape[0]
    best = torch.linalg.svdvals(delta)[:r].square().sum() / delta.square().sum()
    assert abs(part.energy_captured - best.item()) < 0.02
    with pytest.raises(ValueError, match="energy_fraction"):
        low_rank_factors(pert, update, energy_fraction=0.0)


def test_split_half_finds_the_planted_direction_and_a_null_without_it(tmp_path):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(sigma=0.01, parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=0.01)
    # A rank-1 signal in an m x n layer is visible above the noise only when
    # corr(reward, projection) * sqrt(members per half) > (m n)^(1/4) (~9.5 here); 200 members
    # were not enough, 800 are.
    records = search(pert, task, task.splits()["train"], member_seeds(800), [0.01],
                     str(tmp_path / "p.jsonl"), {}, mode="inplace", progress=False)
    base = task(lm.model, task.splits()["train"]).rewards
    rows = split_half(pert, records, base, rank=1)
    weight, example = rows
    assert weight.space == "weight" and example.space == "example"
    # The rewarded update of each half leans on the same rank-1 direction: above every one of
    # the 200 permutations, and more concentrated than a full-rank signal of that strength.
    assert weight.p_value == pytest.approx(1 / 201) and weight.reproducible
    assert weight.low_rank and weight.structured and weight.powered
    assert 0 <= weight.null_mean < 0.2 and weight.family_size == 2
    md = table(rows)
    assert PLANTED_PARAM in md and "| weight |" in md
    png = figure(rows, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").stat().st_size > 1000 and png.endswith(".png")
    assert np.isfinite(example.overlap)


def _rank_choice_setup(direction_kind: str):
    """A planted task that rewards the update's projection on either its own top singular
    direction (a rank-1 structure every truncation keeps) or its full-rank direction (which a
    truncation shrinks to its captured energy). The exact update solves ~97% of the probe."""
    from corp.method.export import choose_rank
    lm = build_tiny_model("llama", seed=0)
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    update = Member(tuple(range(1, 9)), tuple([0.01] * 8))
    param = dict(lm.model.named_parameters())[PLANTED_PARAM]
    keys = [parameter_key(s, PLANTED_PARAM) for s in update.seeds]
    delta = ck.weighted_noise_sum(tuple(param.shape), keys, list(update.coeffs)).double()
    if direction_kind == "rank-1":
        u, s, vh = torch.linalg.svd(delta)
        direction, projection = torch.outer(u[:, 0], vh[0]), float(s[0])
    else:
        direction, projection = delta / delta.norm(), float(delta.norm())
    task = PlantedTask(lm.model, scale=projection / 2.9)
    task.direction = direction
    factors = low_rank_factors(pert, update, max_rank=16, energy_fraction=1.0)
    probe = task.splits()["val"]
    return choose_rank(pert, update, factors, lambda model: task(model, probe), [4, 8, 16]), \
        factors, lm


def test_export_rank_is_chosen_by_reward_not_by_energy():
    choice, factors, lm = _rank_choice_setup("rank-1")
    # rank 4 keeps a small share of the energy, but all of what the reward depends on
    assert choice.rank == 4, choice.reason
    assert choice.candidates[0]["energy_captured"][0] < 0.5
    assert choice.candidates[0]["probe_reward"] == pytest.approx(choice.exact_probe_reward)


def test_export_falls_back_to_the_exact_update_when_no_rank_keeps_the_reward():
    choice, factors, lm = _rank_choice_setup("full-rank")
    assert choice.rank is None and "exact update" in choice.reason
    assert [c["rank"] for c in choice.candidates] == [4, 8, 16]
    assert all(not c["within_tolerance"] for c in choice.candidates)
    assert all(c["probe_reward"] < choice.exact_probe_reward for c in choice.candidates)
