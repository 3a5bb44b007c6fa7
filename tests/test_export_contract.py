"""The export's contract, pinned where mutation testing found it loose
(benchmarks/results/mutation-corp.md): how choose_rank decides, how layer_factors picks a rank
from the energy, what truncation keeps, and the adapter_config.json a PEFT user reads."""

import json

import numpy as np
import pytest
import torch

import corp_kernels as ck
from corp.method.export import (LayerFactors, RankChoice, candidate_ranks, choose_rank,
                                layer_factors, low_rank_factors, write_adapter)
from corp.method.perturb import Member, PerturbationSpec, Perturber, parameter_key
from corp.models import build_tiny_model
from corp_helpers import reward_scores

PARAM = "model.layers.0.mlp.down_proj.weight"


class _Scripted:
    """score_probe that answers from a script (exact first, then each rank tried in order) and
    records the model it was given and the parameter as it saw it."""

    def __init__(self, model, script):
        self.model, self.script, self.seen = model, list(script), []

    def __call__(self, model):
        assert model is self.model, "choose_rank must score the perturber's model"
        self.seen.append(dict(model.named_parameters())[PARAM].detach().clone())
        return reward_scores(self.script.pop(0))


def _setup(max_rank=4):
    lm = build_tiny_model("llama", seed=1)
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PARAM,)))
    update = Member((3, 4, 5), (0.02, -0.03, 0.01))
    factors = low_rank_factors(pert, update, max_rank=max_rank, energy_fraction=1.0)
    return lm, pert, update, factors


def test_choose_rank_accepts_a_loss_inside_the_tolerance_and_refuses_one_outside():
    lm, pert, update, factors = _setup()
    before = dict(lm.model.named_parameters())[PARAM].detach().clone()
    exact = [1, 1, 1, 1, 0, 0, 0, 0]
    # rank 1: loses 1 of 8 (mean -0.125, SE 0.125): mean + SE = 0 >= 0, within tolerance at z=1
    script = _Scripted(lm.model, [exact, [1, 1, 1, 0, 0, 0, 0, 0]])
    choice = choose_rank(pert, update, factors, script, [1, 2])
    assert isinstance(choice, RankChoice) and choice.rank == 1
    assert choice.reason.startswith("rank 1: probe reward 0.3750 vs exact 0.5000")
    assert choice.candidates[0]["paired"]["n"] == 8 and choice.candidates[0]["within_tolerance"]
    # a loss of 2 of 8 (mean -0.25, SE 0.164) is outside at z = 1, at every rank
    script = _Scripted(lm.model, [exact, [1, 1, 0, 0, 0, 0, 0, 0], [1, 1, 0, 0, 0, 0, 0, 0]])
    choice = choose_rank(pert, update, factors, script, [1, 2])
    assert choice.rank is None and [c["rank"] for c in choice.candidates] == [1, 2]
    assert choice.reason.endswith("the export is the exact update")
    # the model was restored after every scoring, and the exact update was what was scored first
    assert torch.equal(dict(lm.model.named_parameters())[PARAM].detach(), before)
    delta = ck.weighted_noise_sum(tuple(before.shape),
                                  [parameter_key(s, PARAM) for s in update.seeds],
                                  list(update.coeffs))
    torch.testing.assert_close(script.seen[0], before + delta)
    assert not torch.equal(script.seen[1], script.seen[0])  # rank 1 is not the exact update


def test_choose_rank_default_confidence_is_the_gates_z_of_one():
    lm, pert, update, factors = _setup()
    # loss 1 of 8 is within at z = 1 (0 >= 0) and would also be at z = 2; a loss of 3 of 16
    # (mean -0.1875, SE 0.1008): within at z = 2 (+0.014), outside at z = 1 (-0.087)
    exact = [1] * 8 + [0] * 8
    low = [1] * 5 + [0] * 11
    choice = choose_rank(pert, update, factors, _Scripted(lm.model, [exact, low]), [1])
    assert choice.rank is None and "(z = 1.0)" in choice.reason


def test_choose_rank_with_one_probe_example_lets_its_difference_decide():
    lm, pert, update, factors = _setup()
    worse = choose_rank(pert, update, factors, _Scripted(lm.model, [[1], [0]]), [1])
    assert worse.rank is None  # the SE is infinite: mean + z * SE would accept anything
    same = choose_rank(pert, update, factors, _Scripted(lm.model, [[1], [1]]), [1])
    assert same.rank == 1


def test_choose_rank_stops_at_the_factors_rank_and_checks_its_ranks():
    lm, pert, update, factors = _setup(max_rank=2)
    assert max(f.rank for f in factors) == 2
    choice = choose_rank(pert, update, factors,
                         _Scripted(lm.model, [[1, 1], [0, 0], [0, 0]]), [1, 2, 4, 8])
    assert isinstance(choice, RankChoice) and choice.rank is None
    assert [c["rank"] for c in choice.candidates] == [1, 2]  # 4 and 8 are not tried
    assert choose_rank(pert, update, factors, _Scripted(lm.model, [[1], [1]]), [1]).rank == 1
    for bad in ([], [0, 2], [-1]):
        with pytest.raises(ValueError, match=r"ranks must be integers >= 1, got"):
            choose_rank(pert, update, factors, _Scripted(lm.model, []), bad)


def test_rank_choice_json_names_its_fields():
    choice = RankChoice(None, 0.5, [{"rank": 4, "probe_reward": 0.25}], "no rank qualified")
    assert choice.to_json() == {"rank": None, "exact_probe_reward": 0.5,
                                "candidates": [{"rank": 4, "probe_reward": 0.25}],
                                "reason": "no rank qualified"}


def test_candidate_ranks():
    assert candidate_ranks(32) == [4, 8, 16, 32]
    assert candidate_ranks(10) == [4, 8, 10]
    assert candidate_ranks(4) == [4]
    assert candidate_ranks(300) == [4, 8, 16, 32, 64, 128, 256, 300]


def test_layer_factors_rank_is_the_smallest_reaching_the_energy_fraction():
    # |Delta|^2 well below 1 (about 0.2): the energy shares must be divided by it, not by 1
    shape, update = (24, 16), Member((7, 8, 9), (0.02, -0.01, 0.005))
    full = layer_factors(PARAM, shape, update, max_rank=16, energy_fraction=1.0)
    per = full.energy_per_direction
    assert per.sum() == pytest.approx(1.0, abs=1e-6) and np.all(np.diff(per) <= 1e-9)
    cum = np.cumsum(per)
    for r in (1, 3, 7):  # asking for exactly the energy of r directions gives rank r
        f = layer_factors(PARAM, shape, update, max_rank=16, energy_fraction=float(cum[r - 1]))
        assert f.rank == r and f.energy_captured == pytest.approx(cum[r - 1])
        # a hair more needs one more direction
        g = layer_factors(PARAM, shape, update, max_rank=16,
                          energy_fraction=float(cum[r - 1] + 1e-6))
        assert g.rank == r + 1
    capped = layer_factors(PARAM, shape, update, max_rank=5, energy_fraction=1.0)
    assert capped.rank == 5 and capped.energy_captured == pytest.approx(cum[4])
    # energy_fraction=None: exactly min(max_rank, shape) directions, energy unknown (NaN)
    bare = layer_factors(PARAM, shape, update, max_rank=6, energy_fraction=None)
    assert bare.rank == 6 and np.isnan(bare.energy_captured)
    assert bare.energy_per_direction is None
    for bad in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match=r"energy_fraction must be in \(0, 1\], got"):
            layer_factors(PARAM, shape, update, energy_fraction=bad)


def test_layer_factors_of_a_zero_update_keep_one_direction():
    f = layer_factors(PARAM, (8, 6), Member((7,), (0.0,)), max_rank=4, energy_fraction=0.9)
    assert f.rank == 1 and float(f.lora_b.abs().sum()) == 0.0


def test_truncated_keeps_the_top_directions_and_their_energy():
    full = layer_factors(PARAM, (24, 16), Member((7, 8), (0.5, -0.2)), max_rank=8,
                         energy_fraction=1.0)
    t = full.truncated(3)
    assert t.rank == 3 and torch.equal(t.lora_b, full.lora_b[:, :3])
    assert torch.equal(t.lora_a, full.lora_a[:3])
    assert t.energy_captured == pytest.approx(float(full.energy_per_direction[:3].sum()))
    assert np.array_equal(t.energy_per_direction, full.energy_per_direction[:3])
    assert full.truncated(100).rank == 8  # no more than there is
    bare = LayerFactors(PARAM, full.lora_b, full.lora_a, float("nan"))
    tb = bare.truncated(2)
    assert tb.rank == 2 and np.isnan(tb.energy_captured) and tb.energy_per_direction is None


def test_adapter_config_is_a_plain_lora_at_scaling_one(tmp_path):
    factors = [layer_factors(name, shape, Member((7,), (0.1,)), max_rank=r, energy_fraction=None)
               for name, shape, r in (("model.layers.0.mlp.up_proj.weight", (12, 8), 2),
                                      ("model.layers.1.self_attn.q_proj.weight", (8, 8), 3))]
    out = tmp_path / "adapter"
    out.mkdir()  # an existing empty folder is fine
    write_adapter(str(out), factors, "base/model")
    config = json.loads((out / "adapter_config.json").read_text())
    ranks = {"model.layers.0.mlp.up_proj": 2, "model.layers.1.self_attn.q_proj": 3}
    assert config == {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": "base/model",
        "r": 3, "lora_alpha": 3, "rank_pattern": ranks, "alpha_pattern": ranks,
        "target_modules": sorted(ranks), "lora_dropout": 0.0, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "init_lora_weights": True,
        "inference_mode": True, "modules_to_save": None}
    with pytest.raises(ValueError, match="is not empty: write_adapter writes a fresh folder"):
        write_adapter(str(out), factors, "base/model")
    with pytest.raises(ValueError, match="no 2-D parameter has an update: nothing to write as a "
                                         "LoRA adapter"):
        write_adapter(str(tmp_path / "none"), [], "base/model")


def test_low_rank_factors_default_keeps_at_most_64_directions():
    # a 192 x 192 layer whose 90%-energy rank (~100) is above 64: the default cap decides
    lm = build_tiny_model("llama", seed=1, hidden=192)
    name = "model.layers.0.self_attn.q_proj.weight"
    pert = Perturber(lm.model, PerturbationSpec(parameters=(name,)))
    update = Member((3, 4, 5), (0.02, -0.03, 0.01))
    (f,) = low_rank_factors(pert, update)
    assert f.rank == 64 and f.energy_captured < 0.9
    g = layer_factors(name, (192, 192), update)  # the same defaults one layer at a time
    assert g.rank == 64 and g.energy_captured == pytest.approx(f.energy_captured, rel=1e-3)
