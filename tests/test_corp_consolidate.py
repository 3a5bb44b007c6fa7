"""CoRP on the planted-direction task: recovers the direction, raises the reward, and gates."""

import numpy as np
import pytest

import corp_kernels as ck
from corp.method.consolidate import CorpConfig, consolidate, two_pass_weights
from corp.models import build_tiny_model
from corp.method.perturb import PerturbationSpec, Perturber, parameter_key, state_fingerprint
from corp.method.population import Record, member_seeds, search
from corp_helpers import PLANTED_PARAM, PlantedTask

SIGMA = 0.01


def planted_setup(tmp_path, harmful=False, n=64):
    lm = build_tiny_model("llama", seed=0)
    pert = Perturber(lm.model, PerturbationSpec(sigma=SIGMA, parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=SIGMA, harmful=harmful)
    records = search(pert, task, task.splits()["train"], member_seeds(n), [SIGMA],
                     str(tmp_path / "pop.jsonl"), {"test": "planted"}, mode="inplace",
                     progress=False)
    return lm, pert, task, records


def update_tensor(update, shape):
    keys = [parameter_key(s, PLANTED_PARAM) for s in update.seeds]
    return ck.weighted_noise_sum(shape, keys, list(update.coeffs)).double()


def test_corp_recovers_planted_direction_and_raises_reward(tmp_path):
    lm, pert, task, records = planted_setup(tmp_path, n=256)
    fp = state_fingerprint(lm.model)
    config = CorpConfig(stage2_members=16, stage2_rounds=2)
    result = consolidate(pert, task, task.splits(), records, config)
    assert state_fingerprint(lm.model) == fp  # the update is returned as seeds, not applied
    assert result.update is not None, result.reason
    assert any(d.accepted for d in result.decisions)
    delta = update_tensor(result.update, task.param.shape)
    cosine = float((delta * task.direction).sum() / delta.norm())
    chance = 1 / np.sqrt(delta.numel())  # |cos| of a random direction, ~0.011 here
    assert cosine > 4 * chance  # measured: 0.070 = 6.3x chance
    base_test = task(lm.model, task.splits()["test"]).reward
    with pert.inplace(result.update):
        corp_test = task(lm.model, task.splits()["test"]).reward
    assert corp_test > base_test


def test_gate_refuses_when_no_member_helps(tmp_path):
    lm, pert, task, records = planted_setup(tmp_path, harmful=True)
    base = task(lm.model, task.splits()["train"]).reward
    assert max(r.reward for r in records) <= base  # the premise: nobody beats the base model
    result = consolidate(pert, task, task.splits(), records,
                         CorpConfig(stage2_members=8, stage2_rounds=2))
    assert result.update is None
    assert "base model" in result.reason
    assert result.decisions and not any(d.accepted for d in result.decisions)


def _records(rewards):
    return [Record(seed=i + 1, sigma=SIGMA, reward=r, accuracy=r, rewards=[r], correct=[r >= 1])
            for i, r in enumerate(rewards)]


def test_all_equal_rewards_return_the_base_model_with_a_reason(tmp_path):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=SIGMA)
    result = consolidate(pert, task, task.splits(), _records([0.5] * 6))
    assert result.update is None and "same train reward" in result.reason


@pytest.mark.parametrize("rewards, match", [([], "empty"), ([0.1, float("nan")], "NaN"),
                                            ([0.1, float("inf")], "NaN or infinite")])
def test_bad_populations_give_clear_errors(rewards, match):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=SIGMA)
    with pytest.raises(ValueError, match=match):
        consolidate(pert, task, task.splits(), _records(rewards))


def test_two_pass_weights_use_exact_geometry():
    # Member 2 is a near-copy of member 0 (aligned with the mean), member 1 is orthogonal and long
    # (dispersed): at equal rewards the second pass must prefer the aligned, compact ones.
    gram = np.array([[1.0, 0.0, 0.95], [0.0, 4.0, 0.0], [0.95, 0.0, 1.0]])
    elite, w2, diag = two_pass_weights(np.array([0.5, 0.5, 0.5]), gram, q=0.0, beta=1.0)
    assert list(elite) == [0, 1, 2]
    assert w2[1] < w2[0] and w2[1] < w2[2]
    np.testing.assert_allclose(w2.sum(), 1.0)
