"""CoRP on the planted-direction task: recovers the direction, raises the reward, and gates."""

import json

import numpy as np
import pytest

import corp_kernels as ck
from corp.evaluate import Scores
from corp.method.consolidate import (ConsolidationResult, Consolidator, CorpConfig, Decision,
                                     best_scoring_sigma, consolidate, ess_weights,
                                     fix_regression_score, fixes_minus_regressions,
                                     member_from_json, member_json, paired_stats,
                                     released_ess_target, released_next_lambda, seed_gram, softmax,
                                     two_pass_weights)
from corp.models import build_tiny_model
from corp.method.perturb import (Member, PerturbationSpec, Perturber, parameter_key,
                                 state_fingerprint)
from corp.method.population import member_seeds, search
from corp_helpers import PLANTED_PARAM, PlantedTask, records_with_rewards

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


def test_all_equal_rewards_return_the_base_model_with_a_reason(tmp_path):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=SIGMA)
    result = consolidate(pert, task, task.splits(), records_with_rewards([0.5] * 6, SIGMA))
    assert result.update is None and "same train reward" in result.reason


@pytest.mark.parametrize("rewards, match", [([], "empty"), ([0.1, float("nan")], "NaN"),
                                            ([0.1, float("inf")], "NaN or infinite")])
def test_bad_populations_give_clear_errors(rewards, match):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=SIGMA)
    with pytest.raises(ValueError, match=match):
        consolidate(pert, task, task.splits(), records_with_rewards(rewards, SIGMA))


def test_two_pass_weights_use_exact_geometry():
    # Member 2 is a near-copy of member 0 (aligned with the mean), member 1 is orthogonal and long
    # (dispersed): at equal rewards the second pass must prefer the aligned, compact ones.
    gram = np.array([[1.0, 0.0, 0.95], [0.0, 4.0, 0.0], [0.95, 0.0, 1.0]])
    elite, w2, diag = two_pass_weights(np.array([0.5, 0.5, 0.5]), gram, q=0.0, beta=1.0)
    assert list(elite) == [0, 1, 2]
    assert w2[1] < w2[0] and w2[1] < w2[2]
    np.testing.assert_allclose(w2.sum(), 1.0)


# --- Stage 2, as released: step units, one notion of "correct", the cloud, the sigma ----------


class PartialCreditPlantedTask(PlantedTask):
    """The planted task with partial credit: a solved example scores 0.75, an unsolved one 0.25,
    and none is ever exactly right (Scores.correct all False), like most writing answers."""

    def __call__(self, model, examples):
        s = super().__call__(model, examples)
        rewards = np.where(s.correct, 0.75, 0.25)
        return Scores(rewards, np.zeros(len(rewards), bool), s.answers)


def _member_norm(pert, member) -> float:
    gram = seed_gram(pert, list(member.seeds))
    c = np.array(member.coeffs)
    return float(np.sqrt(c @ gram @ c))


def _recording_consolidation(pert, task, records, config):
    """consolidate() with every (split, member) that was scored recorded."""
    calls = []
    original = Consolidator.score

    def score(self, examples, member=None):
        split = ("gate_half" if examples is self.gate_half else "probe" if examples is self.probe
                 else "selection" if examples is self.selection else "gate")
        calls.append((split, member))
        return original(self, examples, member)

    Consolidator.score = score
    try:
        return consolidate(pert, task, task.splits(), records, config), calls
    finally:
        Consolidator.score = original


def test_stage2_steps_in_the_units_of_stage1(tmp_path):
    """Stage 2 gates its merge at the Stage-1 step's norm and line-searches 0.5/1/2 times it.
    Before: it gated the raw weighted mean of its proposals, ~1/sqrt(K) of one member long."""
    lm, pert, task, records = planted_setup(tmp_path, n=64)
    config = CorpConfig(stage2_members=8, stage2_rounds=1)
    result, calls = _recording_consolidation(pert, task, records, config)
    stage1 = next(d for d in result.decisions if d.stage == "stage1").detail
    # The Stage-1 step, recomputed here: alpha times the median norm of the elite's members.
    rewards = np.array([r.reward for r in records])
    elite = np.flatnonzero(rewards >= np.quantile(rewards, stage1["q"]))
    gram = seed_gram(pert, [records[i].seed for i in elite]) * SIGMA ** 2
    anchor = stage1["alpha"] * np.median(np.sqrt(np.diag(gram)))
    gate_steps = [_member_norm(pert, m) for split, m in calls if split == "gate_half" and m]
    assert gate_steps, "Stage 2 never reached its gate"
    np.testing.assert_allclose(gate_steps, anchor, rtol=1e-4)
    stage2 = next(d for d in result.decisions if d.stage == "stage2").detail
    assert stage2["merge_norm_raw"] < 0.9 * anchor  # the raw merge really is shorter
    if "alpha" in stage2:  # the line search ran: probe steps are 0.5, 1 and 2 anchors
        probe_steps = sorted(_member_norm(pert, m) for split, m in calls
                             if split == "probe" and m and len(m.seeds) > len(elite))
        np.testing.assert_allclose(probe_steps, [0.5 * anchor, anchor, 2 * anchor], rtol=1e-4)


def test_fixes_and_regressions_count_partial_credit():
    # correct = reward > 0.5 (released): 0.75 vs 0.25 is a fix, 0.25 vs 0.75 a regression.
    assert fix_regression_score([0.75, 0.75], [0.25, 0.75], 2.0) == 0.5
    assert fix_regression_score([0.25, 0.75], [0.75, 0.75], 2.0) == -1.0
    assert fix_regression_score([0.5, 0.9], [0.4, 0.6], 2.0) == 0.0  # 0.5 is not above 0.5


def test_stage2_sees_members_help_on_a_partial_credit_task(tmp_path):
    """Before: Stage 2 used Scores.correct (reward == 1), so on a task where no answer is ever
    exactly right no member could help and its gate could never pass."""
    lm = build_tiny_model("llama", seed=0)
    pert = Perturber(lm.model, PerturbationSpec(sigma=SIGMA, parameters=(PLANTED_PARAM,)))
    task = PartialCreditPlantedTask(lm.model, scale=SIGMA)
    records = search(pert, task, task.splits()["train"], member_seeds(64), [SIGMA],
                     str(tmp_path / "pop.jsonl"), {"test": "partial"}, mode="inplace",
                     progress=False)
    # A short Stage-1 step (alpha 0.1) leaves examples for Stage 2 to fix.
    result = consolidate(pert, task, task.splits(), records,
                         CorpConfig(alphas=(0.1,), stage2_members=8, stage2_rounds=1))
    stage2 = next(d for d in result.decisions if d.stage == "stage2").detail
    assert stage2["members_helping"] > 0


def test_stage2_rebuilds_its_cloud_every_round_from_the_members_that_helped(tmp_path):
    lm, pert, task, records = planted_setup(tmp_path, n=64)
    members = 8
    result = consolidate(pert, task, task.splits(), records,
                         CorpConfig(stage2_members=members, stage2_rounds=3,
                                    stage2_max_reject=3, stage2_max_accept=3))
    rounds = [d.detail for d in result.decisions if d.stage == "stage2"]
    assert len(rounds) >= 2
    for before, after in zip(rounds, rounds[1:]):
        helped = round(before["members_helping"] * members)
        if helped:  # accepted or not, the next cloud is exactly the members that helped
            assert after["cloud_members"] == helped
        else:
            assert after["cloud_members"] == before["cloud_members"]


def test_stage2_starts_at_the_best_scoring_sigma(tmp_path):
    lm = build_tiny_model("llama", seed=0)
    pert = Perturber(lm.model, PerturbationSpec(sigma=SIGMA, parameters=(PLANTED_PARAM,)))
    task = PlantedTask(lm.model, scale=SIGMA)
    sigmas = [SIGMA / 4, SIGMA]  # the planted task rewards the larger steps
    records = search(pert, task, task.splits()["train"], member_seeds(64), sigmas,
                     str(tmp_path / "pop.jsonl"), {"test": "sigmas"}, mode="inplace",
                     progress=False)
    best = best_scoring_sigma(records)
    means = {s: np.mean([r.reward for r in records if r.sigma == s]) for s in sigmas}
    assert means[best] == max(means.values())
    assert best != float(np.median([r.sigma for r in records]))  # the old choice differs here
    result = consolidate(pert, task, task.splits(), records,
                         CorpConfig(stage2_members=8, stage2_rounds=1))
    stage2 = next(d for d in result.decisions if d.stage == "stage2").detail
    assert stage2["sigma"] == best


def test_stage2_defaults_are_the_released_ones():
    config = CorpConfig()
    assert (config.stage2_members, config.stage2_rounds, config.stage2_max_accept,
            config.stage2_max_reject, config.stage2_alphas) == (100, 3, 2, 2, (0.5, 1.0, 2.0))


def test_gate_statistics_state_the_detectable_effect():
    # 100 paired examples, differences of +1 on 20 and 0 elsewhere: mean 0.2, SD 0.402;
    # mde80 = (1 + 0.8416) * 0.402 / 10 = 0.0740.
    new = np.r_[np.ones(20), np.zeros(80)]
    stats = paired_stats(new, np.zeros(100), z=1.0)
    assert stats["mean_diff"] == pytest.approx(0.2)
    assert stats["mde80"] == pytest.approx((1 + 0.8416212) * np.std(new, ddof=1) / 10, rel=1e-6)
    # By construction a true gain of mde80 passes the gate 80% of the time: simulate it.
    rng = np.random.default_rng(0)
    sd, n = 0.5, 64
    mde = paired_stats(rng.normal(0, sd, n), np.zeros(n), z=1.0)["mde80"]
    passes = [paired_stats(rng.normal(mde, sd, n), np.zeros(n), z=1.0)["lcb"] > 0
              for _ in range(2000)]
    assert 0.75 < np.mean(passes) < 0.85  # 2000 draws: SE of a rate of 0.8 is 0.009


def test_result_keeps_the_best_candidate_even_when_the_gate_rejects(tmp_path):
    lm, pert, task, records = planted_setup(tmp_path, harmful=True)
    result = consolidate(pert, task, task.splits(), records,
                         CorpConfig(stage2_members=8, stage2_rounds=1))
    assert result.update is None and result.candidate is not None
    assert result.to_json()["candidate"]["seeds"]


# --- the released procedure ----------------------------------------------------------------------


def test_released_procedure_commits_stage1_without_a_gate(tmp_path):
    """Where no member helps, the gated procedure keeps the base model; the released one commits
    its best Stage-1 grid point anyway (and still reports what the gate would have said)."""
    lm, pert, task, records = planted_setup(tmp_path, harmful=True)
    small = dict(quantiles=(0.5,), betas=(1.0, 5.0), alphas=(0.5, 1.0), stage2_rounds=0)
    gated = consolidate(pert, task, task.splits(), records, CorpConfig(**small))
    released = consolidate(pert, task, task.splits(), records, CorpConfig.released(**small))
    assert gated.update is None
    assert released.update is not None and released.update == released.candidate
    stage1 = released.decisions[0]
    assert stage1.stage == "stage1" and stage1.accepted and "gate" in stage1.detail
    assert "released procedure" in released.reason


def test_released_stage2_sweeps_q_beta_eta_and_gates_each_proposal(tmp_path):
    lm, pert, task, records = planted_setup(tmp_path, n=64)
    config = CorpConfig.released(quantiles=(0.5, 0.9), betas=(1.0,), alphas=(0.1,),
                                 stage2_members=8, stage2_rounds=1)
    result, calls = _recording_consolidation(pert, task, records, config)
    stage2 = next(d for d in result.decisions if d.stage == "stage2").detail
    # 2 quantiles x 1 beta x 3 step multipliers (fewer only where two merges coincide)
    assert 3 <= stage2["proposals"] <= 6 and stage2["proposals"] % 3 == 0
    stage1_step = next(d for d in result.decisions if d.stage == "stage1").detail["step_norm"]
    gate_steps = sorted({round(_member_norm(pert, m) / stage1_step, 6)
                         for split, m in calls if split == "gate_half" and m})
    assert gate_steps == [0.5, 1.0, 2.0]  # eta in {0.5, 1, 2} x the Stage-1 step
    assert stage2["passing_gate"] <= stage2["proposals"]


def test_ess_weights_reach_the_target_at_the_smallest_temperature():
    scores = np.array([0.5, 0.4, 0.1, 0.05, 0.05, 0.01])
    for target in (1.5, 2.0, 3.5, 5.0):
        w = ess_weights(scores, target)
        ess = 1 / np.sum(w ** 2)
        assert ess >= target - 1e-6
        # a 1% colder softmax would miss the target: the temperature is the smallest that works
        t = (scores[0] - scores[1]) / np.log(w[0] / w[1])  # the temperature behind w
        colder = softmax(scores / (0.99 * t))
        assert 1 / np.sum(colder ** 2) < target
    np.testing.assert_allclose(ess_weights(scores, 6.0), np.full(6, 1 / 6))
    assert [released_ess_target(r, 3, 100) for r in range(3)] == [32.0, 16.0, 8.0]
    assert released_ess_target(0, 3, 5) == 5.0


def test_released_lambda_moves_halfway_to_its_target():
    assert released_next_lambda(0.5, 1.0) == pytest.approx(0.5 * 0.5 + 0.5 * 0.15)
    assert released_next_lambda(0.5, 0.0) == pytest.approx(0.5 * 0.5 + 0.5 * 0.95)
    assert released_next_lambda(0.9, 0.5) == pytest.approx(0.5 * 0.9 + 0.5 * 0.55)


def test_unknown_procedure_is_refused():
    with pytest.raises(ValueError, match="procedure must be one of"):
        CorpConfig(procedure="paper")


# -- the record a consolidation writes (read back by `corp rebuild` and a resumed experiment) --

BIG = 2 ** 63 - 25  # a 63-bit seed: a JSON reader that parses numbers as doubles would round it


def test_a_record_round_trips_through_json_text():
    update = Member((BIG, 7), (1e-3, -2.5e-4))
    candidate = Member((BIG, 7, 9), (1e-3, -2.5e-4, 3e-4))
    decisions = [Decision("stage1", True, {"q": 0.9, "gate": {"lcb": 0.01}}),
                 Decision("stage2", False, {"round": 0, "why": "gate"})]
    result = ConsolidationResult(update, decisions, "stage 1 accepted", candidate)
    obj = result.to_json()
    assert set(obj) == {"update", "candidate", "reason", "decisions"}
    assert obj["update"] == {"seeds": [str(BIG), "7"], "coeffs": [1e-3, -2.5e-4]}
    assert obj["candidate"]["seeds"] == [str(BIG), "7", "9"]
    assert obj["reason"] == "stage 1 accepted"
    assert obj["decisions"][1] == {"stage": "stage2", "accepted": False,
                                   "detail": {"round": 0, "why": "gate"}}
    back = ConsolidationResult.from_json(json.loads(json.dumps(obj)))
    assert back == result
    assert back.update.seeds[0] == BIG and isinstance(back.update.coeffs[0], float)


def test_the_base_model_is_recorded_as_no_update():
    result = ConsolidationResult(None, [], "no update passed its gate")
    obj = result.to_json()
    assert obj["update"] is None and obj["candidate"] is None and obj["decisions"] == []
    assert ConsolidationResult.from_json(obj) == result
    assert member_json(None) is None and member_from_json(None) is None
    # an older record without candidate/decisions/reason still reads
    assert ConsolidationResult.from_json({"update": None}) == ConsolidationResult(None, [], "")


def test_member_json_keeps_seeds_exact_as_strings():
    m = Member((BIG, 1), (0.5, -0.25))
    assert member_json(m) == {"seeds": [str(BIG), "1"], "coeffs": [0.5, -0.25]}
    assert member_from_json(member_json(m)) == m


def test_fixes_minus_regressions_counts_partial_credit_above_one_half():
    new = np.array([1.0, 1.0, 0.0, 0.0, 0.6, 0.4])
    old = np.array([0.0, 1.0, 1.0, 0.0, 0.4, 0.6])
    # fixes: 0 (0 -> 1) and 4 (0.4 -> 0.6); regressions: 2 (1 -> 0) and 5 (0.6 -> 0.4);
    # 1 and 3 unchanged
    assert fixes_minus_regressions(new, old) == 0
    assert fixes_minus_regressions(new[:5], old[:5]) == 1
    assert fixes_minus_regressions(old[:5], new[:5]) == -1
    assert fixes_minus_regressions(np.ones(3), np.ones(3)) == 0
    assert fixes_minus_regressions(np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0, 0.0])) == 2


def test_decision_accepted_is_a_real_bool_in_json_and_back():
    """A gate's numpy bool was written by json's default=str as "False" and read back truthy, so
    the experiment's report said "accepted" for rejected steps."""
    import json

    import numpy as np

    from corp.cli.stats import gate_lines
    from corp.method.consolidate import Decision
    d = Decision("stage1", np.bool_(False), {})
    assert d.accepted is False and json.loads(json.dumps(d.__dict__, default=str))["accepted"] is False
    assert Decision(**{"stage": "stage2", "accepted": "False", "detail": {}}).accepted is False
    assert Decision("stage2", "True").accepted is True
    assert gate_lines([{"stage": "stage1", "accepted": Decision("s", "False").accepted,
                        "detail": {}}]) == ["- stage1: rejected"]
