"""What CoRP's parts mean, each checked where a plausible small bug would change the answer
(issue 17: a mutation pass found these behaviours untested):

- the Stage-1 gate decides: a candidate the probe prefers is refused only by the gate's paired
  lower bound (mean gain > 0, LCB < 0), and accepted only because that bound is > 0;
- Stage 2 accepts, and its accept path is what the docstring says: the committed step is the
  line-searched multiple of the Stage-1 step, sigma stays after an accept, lambda adapts, the next
  cloud is the members that helped, and proposals have the energy sigma^2 D (sigma applied once);
- the two-pass merge weighs alignment and dispersion as defined (reference computed here);
- paired statistics have their textbook values;
- the low-rank factors multiply back to the exact update at full rank, and a PEFT
  adapter with different ranks per module merges to W + B @ A for each module;
- population mode assigns each stacked copy's generations to its own member.
"""

import json

import numpy as np
import pytest
import torch

import corp_kernels as ck
from corp.evaluate import Scores, TextEvaluator
from corp.method.consolidate import (Consolidator, CorpConfig, consolidate, paired_stats,
                                     released_next_lambda, seed_gram, two_pass_weights)
from corp.method.export import low_rank_factors, write_adapter
from corp.method.perturb import Member, PerturbationSpec, Perturber, parameter_key
from corp.method.population import member_seeds, search
from corp.models import build_tiny_model, save_model
from corp.tasks import AdditionTask, Example
from corp_helpers import PLANTED_PARAM, PlantedTask, reward_scores

SIGMA = 0.01


class MixedTask(PlantedTask):
    """The planted direction with example kinds: "helped" is solved once the projection on P
    exceeds t, "hurt" is solved until it does, "never" is never solved. `layout` gives each
    split as (kind, count, low t, high t) parts in order (val: probe half first, gate half)."""

    def __init__(self, model, layout, seed=0):
        super().__init__(model, scale=SIGMA, n=1, seed=seed)
        rng = np.random.default_rng(seed + 1)
        self.splits_ = {}
        for split, parts in layout.items():
            examples = []
            for kind, count, low, high in parts:
                for t in rng.uniform(low, high, count):
                    examples.append(Example(f"{split}{len(examples)}", "1",
                                            {"t": float(t), "kind": kind}))
            self.splits_[split] = examples

    def __call__(self, model, examples):
        proj = self.projection()
        ok = np.array([proj > e.meta["t"] if e.meta["kind"] == "helped" else
                       proj <= e.meta["t"] if e.meta["kind"] == "hurt" else False
                       for e in examples])
        return Scores(ok.astype(float), ok, [str(int(o)) for o in ok])


TRAIN = [("helped", 48, -0.5, 3.0)]
PROBE = [("helped", 16, 0.01, 0.3)]
# gate halves: +1 on 6, -1 on 5, 0 on 5 -> mean 1/16 > 0 but LCB = mean - SE < 0
GATE_UNSURE = [("helped", 6, 0.01, 0.3), ("hurt", 5, 0.01, 0.3), ("never", 5, 0, 0)]
# +1 on 8, -1 on 1, 0 on 7 -> mean 7/16, SE 0.157: LCB > 0, but not with SE = SD (no sqrt n)
GATE_SURE = [("helped", 8, 0.01, 0.3), ("hurt", 1, 0.01, 0.3), ("never", 7, 0, 0)]


def _setup(tmp_path, gate, n=64):
    lm = build_tiny_model("llama", seed=0)
    pert = Perturber(lm.model, PerturbationSpec(sigma=SIGMA, parameters=(PLANTED_PARAM,)))
    task = MixedTask(lm.model, {"train": TRAIN, "val": PROBE + gate, "test": PROBE})
    records = search(pert, task, task.splits()["train"], member_seeds(n), [SIGMA],
                     str(tmp_path / "pop.jsonl"), {"test": "mixed"}, mode="inplace",
                     progress=False)
    return lm, pert, task, records


def _stage1(result):
    return next(d for d in result.decisions if d.stage == "stage1")


def test_the_gate_alone_refuses_a_candidate_the_probe_prefers(tmp_path):
    lm, pert, task, records = _setup(tmp_path, GATE_UNSURE)
    result = consolidate(pert, task, task.splits(), records, CorpConfig(stage2_rounds=0))
    stage1 = _stage1(result)
    detail = stage1.detail
    assert detail["probe_reward"] > detail["probe_reward_base"]  # the probe says yes
    gate = detail["gate"]
    assert gate["n"] == 16 and gate["mean_diff"] == pytest.approx(1 / 16)  # a gain, but unsure
    diffs = np.array([1.0] * 6 + [-1.0] * 5 + [0.0] * 5)
    assert gate["lcb"] == pytest.approx(diffs.mean() - diffs.std(ddof=1) / 4)  # < 0
    assert not stage1.accepted and result.update is None and "gate" in detail["why"]
    assert result.candidate is not None  # what the gate was asked about is kept


def test_the_gate_alone_accepts_a_candidate_whose_lower_bound_is_positive(tmp_path):
    lm, pert, task, records = _setup(tmp_path, GATE_SURE)
    result = consolidate(pert, task, task.splits(), records, CorpConfig(stage2_rounds=0))
    stage1 = _stage1(result)
    gate = stage1.detail["gate"]
    diffs = np.array([1.0] * 8 + [-1.0] + [0.0] * 7)
    assert gate["mean_diff"] == pytest.approx(7 / 16)
    assert gate["lcb"] == pytest.approx(diffs.mean() - diffs.std(ddof=1) / 4)
    assert 0 < gate["lcb"] < diffs.std(ddof=1)  # passes only with the sqrt(n) in the SE
    assert stage1.accepted and result.update == result.candidate
    with pert.inplace(result.update):
        assert task.projection() > 0.3  # the committed step solves every probe example


def test_paired_stats_known_values():
    new, old = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 1.0, 1.0, 0.0])
    s = paired_stats(new, old, z=2.0)
    d = new - old  # 1, 0, -1, 1: mean .25, sd sqrt(11/12)
    assert s["mean_diff"] == pytest.approx(0.25) and s["n"] == 4
    assert s["se"] == pytest.approx(np.sqrt(((d - 0.25) ** 2).sum() / 3) / 2)
    assert s["lcb"] == pytest.approx(0.25 - 2.0 * s["se"])
    assert s["mde80"] == pytest.approx((2.0 + 0.8416212335729143) * s["se"])


def test_stage2_accepts_and_its_accept_path_follows_the_docstring(tmp_path):
    """Stage 1 is refused by its gate (GATE_UNSURE), so Stage 2 starts from the base model; its
    first round finds the planted direction and is accepted, the second has nothing left to fix."""
    lm, pert, task, records = _setup(tmp_path, GATE_UNSURE)
    config = CorpConfig(stage2_rounds=2, stage2_members=16, stage2_max_reject=2)
    scored = []
    original = Consolidator.score

    def score(self, examples, member=None):
        if examples is self.selection and member is not None:
            scored.append(member)
        return original(self, examples, member)

    Consolidator.score = score
    try:
        result = consolidate(pert, task, task.splits(), records, config)
    finally:
        Consolidator.score = original
    assert not _stage1(result).accepted
    rounds = [d for d in result.decisions if d.stage == "stage2"]
    assert [d.accepted for d in rounds] == [True, False]
    first, second = rounds[0].detail, rounds[1].detail
    step = _stage1(result).detail["step_norm"]
    # the committed update is the line search's multiple of the Stage-1 step
    assert first["alpha"] in (0.5, 1.0, 2.0)
    c = np.array(result.update.coeffs)
    norm = float(np.sqrt(c @ seed_gram(pert, list(result.update.seeds)) @ c))
    assert norm == pytest.approx(first["alpha"] * step, rel=1e-6)
    assert first["probe"]["lcb"] > 0 and first["gate"]["lcb"] > 0 and first["gate_score"] > 0
    # sigma stays after an accept; lambda moves as documented; the cloud is who helped
    assert second["sigma"] == first["sigma"]
    helping = first["members_helping"]
    lam = min(0.9, first["lambda"] + 0.2) if helping < 0.25 else max(0.1, first["lambda"] - 0.1)
    assert second["lambda"] == pytest.approx(lam)
    assert second["cloud_members"] == round(helping * config.stage2_members)
    # proposals have energy sigma^2 D on average (sigma once, unit principal directions)
    proposals = scored[:config.stage2_members]
    energies = []
    for m in proposals:
        coeffs = np.array(m.coeffs)
        energies.append(coeffs @ seed_gram(pert, list(m.seeds)) @ coeffs)
    ratio = np.mean(energies) / (first["sigma"] ** 2 * pert.numel)
    assert 0.75 < ratio < 1.25, ratio
    base = task(lm.model, task.splits()["test"]).reward
    with pert.inplace(result.update):
        assert task(lm.model, task.splits()["test"]).reward > base


def _two_pass_reference(rewards, gram, beta):
    """The two-pass rule written out from its definition (q = 0: every member is in the elite)."""
    w1 = np.exp(beta * rewards) / np.exp(beta * rewards).sum()
    m_dot = gram @ w1
    m_norm = np.sqrt(w1 @ gram @ w1)
    norms = np.sqrt(np.diag(gram))
    align = m_dot / (norms * m_norm)
    disp = norms ** 2 - (m_dot / m_norm) ** 2

    def z(x):
        return (x - x.mean()) / x.std()
    logits = beta * rewards + z(align) - z(disp)
    return np.exp(logits) / np.exp(logits).sum()


def test_two_pass_weights_rank_members_by_alignment():
    """Four members of equal norm and reward: 0-2 point roughly the same way, 3 is orthogonal.
    Alignment (and the dispersion it implies) must put 3 last, by the documented amounts."""
    gram = np.array([[1.0, 0.9, 0.8, 0.0], [0.9, 1.0, 0.7, 0.0], [0.8, 0.7, 1.0, 0.0],
                     [0.0, 0.0, 0.0, 1.0]])
    rewards = np.array([0.5, 0.5, 0.5, 0.5])
    elite, w2, _ = two_pass_weights(rewards, gram, q=0.0, beta=1.0)
    np.testing.assert_allclose(w2, _two_pass_reference(rewards, gram, 1.0), rtol=1e-12)
    assert w2[3] < 0.25 * min(w2[:3])
    # rewards still count: with beta large the best-rewarded member leads whatever its geometry
    rewards = np.array([0.5, 0.5, 0.5, 0.9])
    _, w2, _ = two_pass_weights(rewards, gram, q=0.0, beta=20.0)
    np.testing.assert_allclose(w2, _two_pass_reference(rewards, gram, 20.0), rtol=1e-12)
    assert np.argmax(w2) == 3


def test_low_rank_factors_multiply_back_to_the_update_at_full_rank():
    lm = build_tiny_model("llama", seed=1)
    pert = Perturber(lm.model, PerturbationSpec())
    update = Member((3, 4), (0.02, -0.03))  # noise matrices are full rank: so is the update
    factors = low_rank_factors(pert, update, max_rank=128, energy_fraction=1.0)
    shapes = {name: tuple(p.shape) for name, p in pert.params}
    for f in factors:
        keys = [parameter_key(s, f.name) for s in update.seeds]
        exact = ck.weighted_noise_sum(shapes[f.name], keys, list(update.coeffs)).double()
        got = f.lora_b.double() @ f.lora_a.double()
        assert f.rank == min(shapes[f.name])  # full rank: B @ A must be the update itself
        assert f.energy_captured == pytest.approx(1.0, abs=1e-5)
        assert float((got - exact).norm() / exact.norm()) < 1e-4, f.name


def test_peft_merges_each_module_at_its_own_rank(tmp_path):
    peft = pytest.importorskip("peft")
    lm = build_tiny_model("llama", seed=1)
    pert = Perturber(lm.model, PerturbationSpec())
    update = Member((3, 4, 5), (0.02, -0.03, 0.01))
    factors = low_rank_factors(pert, update, max_rank=3, energy_fraction=1.0)
    # ranks 1, 2, 3, 1, 2, 3, ... across modules
    factors = [f.truncated(1 + i % 3) for i, f in enumerate(factors)]
    assert len({f.rank for f in factors}) == 3
    base_dir = tmp_path / "base"
    save_model(lm, str(base_dir))
    write_adapter(str(tmp_path / "adapter"), factors, str(base_dir))
    merged = peft.PeftModel.from_pretrained(build_tiny_model("llama", seed=1).model,
                                            str(tmp_path / "adapter")).merge_and_unload()
    got = dict(merged.named_parameters())
    base = dict(build_tiny_model("llama", seed=1).model.named_parameters())
    for f in factors:
        want = base[f.name].detach() + f.lora_b @ f.lora_a
        torch.testing.assert_close(got[f.name].detach(), want, rtol=1e-6, atol=1e-6)
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(set(config["rank_pattern"].values())) == [1, 2, 3]


def test_population_mode_gives_each_member_its_own_generations():
    lm = build_tiny_model("llama", seed=2)
    pert = Perturber(lm.model, PerturbationSpec())
    task = AdditionTask(n_train=5, n_val=2, n_test=2)
    evaluator = TextEvaluator(task, lm.codec, batch_size=3)  # two chunks: 3 + 2 prompts
    prompts = [e.prompt for e in task.splits()["train"]]
    members = [Member.single(s, 0.2) for s in (11, 12, 13)]
    with pert.population(members):
        together = evaluator.generate(lm.model, prompts, copies=len(members))
    alone = []
    for m in members:
        with pert.inplace(m):
            alone.append(evaluator.generate(lm.model, prompts)[0])
    assert len({tuple(a) for a in alone}) == len(members)  # the members do differ
    assert together == alone


def test_released_stage2_accepts_and_its_accept_path_follows_the_released_code(tmp_path):
    """Released procedure: Stage 1 is committed ungated at a step against the planted direction
    (raw alpha -0.3: Stage 2's steps are anchored to its size, so it must not be tiny), so Stage
    2's sweep has the planted direction to find again: a proposal passes the
    gate half, the probe line search accepts it, and the next round starts from what the released
    code says (same sigma, eta scaled by the line search's multiplier, lambda moved halfway to its
    target, the cloud rebuilt from the members that helped)."""
    lm, pert, task, records = _setup(tmp_path, GATE_UNSURE)
    config = CorpConfig.released(quantiles=(0.5,), betas=(1.0,), alphas=(-0.3,),
                                 stage2_members=16, stage2_rounds=3, stage2_max_accept=2,
                                 stage2_max_reject=1)
    base_probe = task(lm.model, task.splits()["val"][:16]).reward
    result = consolidate(pert, task, task.splits(), records, config)
    stage1 = _stage1(result)
    assert stage1.accepted and stage1.detail["probe_reward"] <= base_probe  # no gain committed
    rounds = [d for d in result.decisions if d.stage == "stage2"]
    assert rounds[0].accepted, rounds[0].detail
    first = rounds[0].detail
    assert first["passing_gate"] >= 1 and first["gate_score"] > 0 and first["gate"]["lcb"] > 0
    assert first["probe"]["lcb"] > 0 and first["probe_reward"] >= first["probe_reward_before"]
    assert first["line_search"] in (0.5, 1.0, 2.0)
    # the committed step: Stage 1's update plus the chosen merge at the line search's multiple,
    # whose norm is the multiplier times the proposal's eta (itself a multiple of Stage 1's)
    gram_seeds = list(result.update.seeds)
    c = np.array(result.update.coeffs)
    s1 = dict(zip(stage1_seeds := list(result.candidate.seeds), result.candidate.coeffs))
    step = np.array([c_j - s1.get(s, 0.0) for s, c_j in zip(gram_seeds, c)])
    norm = float(np.sqrt(step @ seed_gram(pert, gram_seeds) @ step))
    assert norm == pytest.approx(first["line_search"] * first["step"], rel=1e-6)
    assert set(stage1_seeds) <= set(gram_seeds)
    # round 1 is refused by its line search; with stage2_max_reject = 1 round 2 never runs
    assert [d.accepted for d in rounds] == [True, False]
    assert [d.detail["round"] for d in rounds] == [0, 1]
    assert all(d.detail["procedure"] == "released" for d in rounds)
    assert rounds[1].detail["why"] == "line search: probe LCB not > 0 or probe reward dropped"
    assert "why" not in first
    if len(rounds) > 1:
        second = rounds[1].detail
        assert second["sigma"] == first["sigma"]  # halved only after a rejection
        assert second["eta"] == pytest.approx(first["line_search"] * first["step"])
        assert second["lambda"] == pytest.approx(
            released_next_lambda(first["lambda"], first["members_helping"]))
        assert second["cloud_members"] == round(first["members_helping"] * 16)
    with pert.inplace(result.update):
        assert task(lm.model, task.splits()["val"][:16]).reward > base_probe


def _planted_perturber() -> Perturber:
    """The tiny Llama with its planted layer perturbed: what the scripted tests run on."""
    lm = build_tiny_model("llama", seed=0)
    return Perturber(lm.model, PerturbationSpec(sigma=SIGMA, parameters=(PLANTED_PARAM,)))


def _consolidator(config=None, cls=Consolidator, n=8, evaluator=None, **kwargs):
    """`cls` on the planted perturber with n examples as both train and validation."""
    examples = [Example(f"e{i}", "1") for i in range(n)]
    return cls(_planted_perturber(), evaluator, {"train": examples, "val": examples, "test": []},
               config or CorpConfig(), progress=False, **kwargs)


# A Stage-2 cloud of four single members, equally weighted
_CLOUD = ([11, 12, 13, 14], np.eye(4) * SIGMA, np.full(4, 0.25))


def _ones(n, *ranges):
    r = np.zeros(n)
    for lo, hi in ranges:
        r[lo:hi] = 1
    return r


class _ScriptedScores(Consolidator):
    """A Consolidator whose scores come from a script keyed by (split, is the current model, call
    index), so that released Stage 2's decision rules can be checked on chosen numbers."""

    def __init__(self, *args, script, **kwargs):
        super().__init__(*args, **kwargs)
        self.script, self.calls = script, {}

    def score(self, examples, member=None):
        split = ("selection" if examples is self.selection else "gate" if examples is
                 self.gate_half else "probe" if examples is self.probe else "other")
        key = (split, member is None)
        index = self.calls.get(key, 0)
        self.calls[key] = index + 1
        return reward_scores(self.script(split, member is None, index))


def test_released_stage2_chooses_the_best_passing_proposal_and_the_smallest_tied_step():
    """Three proposals (step multipliers 0.5, 1, 2 of eta): by selection score P1 (x1) > P2 (x2) >
    P0 (x0.5), but P1's gate score is exactly 0 (12 fixes, 6 regressions weighted 2) though its
    paired LCB is > 0, so it does not pass: the choice is P2. Its line search finds the same
    probe reward at every multiplier: ties go to the smallest (0.5)."""
    n = 40

    def ones(*ranges):
        return _ones(n, *ranges)

    def script(split, current, i):
        if split == "selection":
            solved = (35, 40)  # the current model solves these 5; everyone keeps them
            if current:
                return ones(solved)
            if i < 4:  # the local members: the first one fixes an example
                return ones((0, 1), solved) if i == 0 else ones(solved)
            return ones((0, {4: 1, 5: 3, 6: 2}[i]), solved)  # P0, P1, P2: 1, 3, 2 fixes
        if split == "gate":
            kept = (30, 40)  # the current model solves these 10
            if current:
                return ones(kept)
            return ones((0, 12), (30, 34)) if i == 1 else ones((0, 10), kept)
        if split == "probe":
            return np.zeros(n) if current else ones((0, 10))
        raise AssertionError(split)

    config = CorpConfig.released(quantiles=(0.5,), betas=(1.0,), stage2_members=4,
                                 stage2_rounds=1)
    cons = _consolidator(config, _ScriptedScores, 2 * n, script=script)
    eta = 0.5
    update = cons.released_stage2(None, _CLOUD, SIGMA, eta)
    (decision,) = cons.decisions
    d = decision.detail
    assert decision.accepted and d["proposals"] == 3 and d["passing_gate"] == 2
    assert d["step"] == pytest.approx(2.0 * eta)  # P2
    assert d["selection_score"] == pytest.approx(2 / n)
    assert d["gate_score"] == pytest.approx(10 / n) and d["gate"]["lcb"] > 0
    assert d["line_search"] == 0.5
    assert d["probe_reward"] == 0.25 and d["probe_reward_before"] == 0.0
    assert d["members_helping"] == 0.25
    # the committed update is P2 at half its step: norm 0.5 * 2 * eta
    c = np.array(update.coeffs)
    norm = float(np.sqrt(c @ seed_gram(cons.perturber, list(update.seeds)) @ c))
    assert norm == pytest.approx(0.5 * 2.0 * eta, rel=1e-6)


# -- released Stage 2 over several rounds: when it stops, what it logs, what it skips ------------

def _scripted(script, config):
    """_ScriptedScores on 40 + 40 examples, `script(split, current)` regardless of call index."""
    return _consolidator(config, _ScriptedScores, 80,
                         script=lambda split, current, i: script(split, current))


def _released_stage2_run(script, sigma=SIGMA, **config):
    cons = _scripted(script, CorpConfig.released(**{"quantiles": (0.5,), "betas": (1.0,),
                                                    "stage2_members": 4, **config}))
    update = cons.released_stage2(None, _CLOUD, sigma, 0.5)
    return cons, update


def _always_better(split, current):
    """Every proposal fixes examples on every split; the current model solves none."""
    n = 40
    return np.zeros(n) if current else _ones(n, (0, {"selection": 5, "gate": 20,
                                                    "probe": 10}[split]))


def _never_better(split, current):
    """Proposals and the current model solve the same examples."""
    return _ones(40, (30, 40))


def test_released_stage2_stops_after_max_accept_accepts(caplog):
    with caplog.at_level("INFO", logger="corp"):
        cons, update = _released_stage2_run(_always_better, stage2_rounds=5, stage2_max_accept=2)
    assert [d.accepted for d in cons.decisions] == [True, True]
    assert update is not None
    assert "stage 2 (released) round 0: sigma 0.01, 3/3 proposals pass the gate -> accept" \
        in caplog.text
    cons, _ = _released_stage2_run(_always_better, stage2_rounds=5, stage2_max_accept=3)
    assert len(cons.decisions) == 3


def test_released_stage2_stops_after_max_reject_rejects_halving_sigma(caplog):
    with caplog.at_level("INFO", logger="corp"):
        cons, update = _released_stage2_run(_never_better, stage2_rounds=5, stage2_max_reject=2)
    assert [d.accepted for d in cons.decisions] == [False, False] and update is None
    assert [d.detail["sigma"] for d in cons.decisions] == [SIGMA, SIGMA / 2]
    assert all(d.detail["why"] == "no proposal of the sweep passed the gate"
               for d in cons.decisions)
    assert "round 1: sigma 0.005, 0/3 proposals pass the gate -> reject" in caplog.text


def test_released_stage2_gates_against_the_current_model_not_zero():
    """One proposal per round: it keeps the 10 gate examples the current model solves and fixes
    one more. Gate score 1/40 > 0, but the paired lower bound against the current model is
    0.025 - 1.5 x 0.025 < 0: rejected. (Against a model that solves nothing it would pass.)"""
    def script(split, current):
        n = 40
        if split == "gate":
            return _ones(n, (30, 40)) if current else _ones(n, (0, 1), (30, 40))
        return np.zeros(n) if current else _ones(n, (0, 5))
    cons, update = _released_stage2_run(script, stage2_rounds=1, stage2_alphas=(1.0,),
                                        gate_z=1.5)
    (d,) = cons.decisions
    assert d.detail["gate_score"] == pytest.approx(1 / 40)
    assert d.detail["gate"]["mean_diff"] == pytest.approx(1 / 40)
    assert d.detail["gate"]["lcb"] == pytest.approx(1 / 40 - 1.5 * 0.025)
    assert not d.accepted and update is None


def test_released_stage2_proposes_a_repeated_merge_once():
    # the same (elite, weights) from two grid points is proposed once (x 3 step multipliers)
    cons, _ = _released_stage2_run(_always_better, stage2_rounds=1, quantiles=(0.5, 0.5))
    assert cons.decisions[0].detail["proposals"] == 3


def test_the_released_configuration_is_the_released_codes():
    cfg = CorpConfig.released()
    assert (cfg.procedure, cfg.alpha_units, cfg.stage2_members, cfg.stage2_rounds,
            cfg.stage2_max_accept, cfg.stage2_max_reject, cfg.stage2_alphas,
            cfg.regression_weight, cfg.gate_z) == ("released", "raw", 100, 3, 2, 2,
                                                   (0.5, 1.0, 2.0), 2.0, 1.0)
    assert (cfg.quantiles, cfg.betas, cfg.alphas) == (
        (0.5, 0.7, 0.9), (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0), (0.5, 1.0, 2.0, 4.0, 8.0, 16.0))
    assert CorpConfig.released(stage2_rounds=1).stage2_rounds == 1  # overrides win


def test_ess_weights_and_the_released_lambda_schedule():
    from corp.method.consolidate import (effective_sample_size, ess_weights,
                                         released_next_lambda)
    w = ess_weights(np.array([0.0, 1.0]), 1.5)  # a spread of exactly 1 is still tempered
    assert w[1] > w[0] and effective_sample_size(w) == pytest.approx(1.5, abs=1e-9)
    for target in (3, 5):  # the target is the whole population or more: uniform
        np.testing.assert_array_equal(ess_weights(np.array([0.0, 1.0, 2.0]), target),
                                      np.full(3, 1 / 3))
    np.testing.assert_array_equal(ess_weights(np.array([2.0, 2.0]), 1.1), [0.5, 0.5])
    np.testing.assert_allclose(ess_weights(np.array([True, False, True]), 1.5),
                               ess_weights(np.array([1.0, 0.0, 1.0]), 1.5))
    # lambda moves halfway towards 0.15 + 0.8 (1 - share of members that helped), in [.05, .95]
    assert released_next_lambda(0.5, 1.0) == pytest.approx(0.325)
    assert released_next_lambda(0.5, 0.0) == pytest.approx(0.725)
    assert released_next_lambda(1.0, 0.0) == 0.95 and released_next_lambda(-1.0, 1.0) == 0.05


# -- the gated Stage 2 (the default procedure) over several rounds --------------------------------

def _gated_stage2_run(script, **config):
    cons = _scripted(script, CorpConfig(**{"stage2_members": 4, **config}))
    cons.stage1_step_norm = 0.5
    update = cons.stage2(None, _CLOUD, 0.5, 1.0, SIGMA)
    return cons, update


def _probe_rewards(before, after):
    """A script: better everywhere off the probe; on the probe the current model scores `before`
    and every candidate `after`."""
    def script(split, current):
        if split != "probe":
            return _always_better(split, current)
        return before if current else after
    return script


def test_gated_stage2_stops_after_max_accept_and_adapts_lambda(caplog):
    with caplog.at_level("INFO", logger="corp"):
        cons, update = _gated_stage2_run(_always_better, stage2_rounds=5, stage2_max_accept=2)
    assert [d.accepted for d in cons.decisions] == [True, True] and update is not None
    assert [d.detail["round"] for d in cons.decisions] == [0, 1]
    # every member helped (>= 1/4): the proposal leans on the cloud, lambda 0.5 -> 0.4
    assert [d.detail["lambda"] for d in cons.decisions] == [0.5, pytest.approx(0.4)]
    gate = cons.decisions[0].detail["gate"]
    assert ("stage 2 round 0: sigma 0.01, lambda 0.50, 100% members help, gate 0.5000 (LCB "
            f"{gate['lcb']:.4f}) -> accept") in caplog.text


def test_gated_stage2_stops_after_max_reject_halving_sigma(caplog):
    with caplog.at_level("INFO", logger="corp"):
        cons, update = _gated_stage2_run(_never_better, stage2_rounds=5, stage2_max_reject=2)
    assert [d.accepted for d in cons.decisions] == [False, False] and update is None
    assert [d.detail["sigma"] for d in cons.decisions] == [SIGMA, SIGMA / 2]
    # nobody helped (< 1/4): a more isotropic proposal, lambda 0.5 -> 0.7
    assert [d.detail["lambda"] for d in cons.decisions] == [0.5, pytest.approx(0.7)]
    assert all(d.detail["why"] == "gate: fix/regression score or paired LCB on the gate half "
                                  "not > 0" for d in cons.decisions)
    assert "0% members help, gate 0.0000 (LCB 0.0000) -> reject" in caplog.text


def test_gated_stage2_gate_score_of_zero_is_a_rejection():
    """12 fixes and 6 regressions weighted 2 on the gate: score exactly 0, paired LCB > 0."""
    def script(split, current):
        n = 40
        if split == "gate":
            return _ones(n, (30, 40)) if current else _ones(n, (0, 12), (36, 40))
        return _always_better(split, current)
    cons, update = _gated_stage2_run(script, stage2_rounds=1)
    (d,) = cons.decisions
    assert d.detail["gate_score"] == 0.0 and d.detail["gate"]["lcb"] > 0
    assert not d.accepted and update is None


def test_gated_stage2_line_search_ties_and_the_share_of_correct_answers():
    # the same probe reward at every multiplier: the smallest wins
    cons, _ = _gated_stage2_run(_always_better, stage2_rounds=1, stage2_alphas=(0.5, 1.0, 2.0))
    assert cons.decisions[0].detail["alpha"] == 0.5

    # On the probe the candidate raises the mean reward (LCB > 0) but no answer is correct
    # (> 0.5) any more, where the current model had 10: the share dropped, rejected.
    partial = _probe_rewards(0.6 * _ones(40, (0, 10)),
                             0.4 * _ones(40, (0, 10)) + 0.5 * _ones(40, (10, 40)))
    cons, update = _gated_stage2_run(partial, stage2_rounds=1)
    (d,) = cons.decisions
    assert d.detail["probe"]["lcb"] > 0
    assert (d.detail["probe_correct_share"], d.detail["probe_correct_share_before"]) == (0.0, 0.25)
    assert d.detail["why"] == ("line search: probe LCB not > 0 or the probe's share of correct "
                               "answers dropped")
    assert not d.accepted and update is None


def test_gated_stage2_needs_the_stage1_step():
    cons = _consolidator()
    with pytest.raises(RuntimeError, match=r"^stage2 needs the Stage-1 step as its unit: run "
                                           r"stage1 first$"):
        cons.stage2(None, ([1], np.eye(1), np.ones(1)), 0.5, 1.0, SIGMA)


def test_principal_directions_are_the_weighted_clouds_top_eigenvectors():
    cons = _consolidator()
    pert = cons.perturber
    seeds = [21, 22, 23, 24, 25]
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((6, 5)) + 3.0  # a cloud far from the origin: centring matters
    weights = rng.dirichlet(np.ones(6))
    dirs, lam = cons.principal_directions(seeds, rows, weights, 3)
    # the members as explicit vectors of noise
    eps = np.stack([np.concatenate([ck.gaussian_noise(tuple(p.shape), parameter_key(s, name))
                                    .double().flatten().numpy() for name, p in pert.params])
                    for s in seeds])
    x = rows @ eps
    scaled = np.sqrt(weights)[:, None] * (x - weights @ x)
    # covariance = scaled^T scaled; its nonzero eigenvalues are those of scaled scaled^T
    top = np.sort(np.linalg.eigvalsh(scaled @ scaled.T))[::-1][:3]
    np.testing.assert_allclose(lam, top, rtol=1e-6)
    v = dirs @ eps  # unit-norm directions, each an eigenvector of the covariance
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    projected = v @ scaled.T
    np.testing.assert_allclose(projected @ projected.T, np.diag(top), rtol=1e-6,
                               atol=1e-6 * top[0])


# -- Stage 1's decisions on scripted scores -------------------------------------------------------

class _Stage1Scripted(_ScriptedScores):
    """Scores by split for Stage 1: the probe and the validation gate; candidates (member not
    None) score `candidate(split, alpha)`, the base model `base(split)`."""

    def __init__(self, *args, base, candidate, **kwargs):
        super().__init__(*args, script=None, **kwargs)
        self.base, self.candidate = base, candidate

    def score(self, examples, member=None):
        split = "probe" if examples is self.probe else "gate" if examples is self.gate else "?"
        if member is None:
            return reward_scores(self.base(split))
        return reward_scores(self.candidate(split, member))


def _stage1_run(base, candidate, **config):
    from corp_helpers import records_with_rewards
    cfg = CorpConfig(**{"quantiles": (0.5,), "betas": (1.0,), "alphas": (1.0,), **config})
    cons = _consolidator(cfg, _Stage1Scripted, 80, base=base, candidate=candidate)
    records = records_with_rewards([0.1, 0.3, 0.2, 0.5, 0.4, 0.6], sigma=SIGMA)
    sig = np.array([r.sigma for r in records])
    gram = seed_gram(cons.perturber, [r.seed for r in records]) * np.outer(sig, sig)
    update, qb = cons.stage1(records, gram)
    return cons, update, qb


def test_stage1_a_probe_tie_with_the_base_is_no_gain(caplog):
    better_gate = lambda split, member: _ones(40, (0, 10) if split == "probe" else (0, 20))  # noqa: E731,E501
    cons, update, _ = _stage1_run(lambda split: _ones(40, (0, 10)) if split == "probe"
                                  else np.zeros(40), better_gate)
    (d,) = cons.decisions
    assert d.accepted is False and update is None  # a bool in the record, not just falsy
    assert d.detail["why"] == "no candidate beats the base model on the probe split"
    assert d.stage == "stage1" and d.detail["probe_reward"] == d.detail["probe_reward_base"]


def test_stage1_commits_through_its_gate_and_logs_it(caplog):
    base = lambda split: np.zeros(40)  # noqa: E731
    with caplog.at_level("INFO", logger="corp"):
        cons, update, qb = _stage1_run(base, lambda split, member: _ones(40, (0, 12)))
    (d,) = cons.decisions
    assert d.accepted and update is not None and qb == (0.5, 1.0)
    assert (d.detail["gate_reward"], d.detail["gate_reward_base"]) == (0.3, 0.0)
    assert "why" not in d.detail
    assert (f"stage 1: q=0.5 beta=1.0 alpha=1.0 probe 0.3000 (base 0.0000), gate LCB "
            f"{d.detail['gate']['lcb']:.4f} -> commit") in caplog.text
    caplog.clear()
    with caplog.at_level("INFO", logger="corp"):  # better on the probe only: the gate refuses
        cons, update, _ = _stage1_run(base, lambda split, member: _ones(40, (0, 12))
                                      if split == "probe" else np.zeros(40))
    (d,) = cons.decisions
    assert not d.accepted and update is None
    assert d.detail["why"] == "gate: paired lower confidence bound on the gate split is not > 0"
    assert caplog.text.rstrip().endswith("-> reject")


def test_stage1_ties_gated_takes_the_shortest_step_released_the_first_visited():
    base = lambda split: np.zeros(40)  # noqa: E731
    same = lambda split, member: _ones(40, (0, 12))  # noqa: E731
    grid = dict(quantiles=(0.5, 0.9), alphas=(2.0, 0.5))
    cons, _, qb = _stage1_run(base, same, **grid)
    (d,) = cons.decisions
    assert (d.detail["alpha"], d.detail["q"], d.detail["candidates"]) == (0.5, 0.5, 4)
    cons, _, qb = _stage1_run(base, same, procedure="released", **grid)
    assert (cons.decisions[0].detail["alpha"], cons.decisions[0].detail["q"]) == (2.0, 0.5)


def test_two_pass_weights_do_not_depend_on_the_scale_of_the_perturbations():
    from corp.method.consolidate import stage1_coefficients, two_pass_weights
    rng = np.random.default_rng(0)
    x = rng.standard_normal((6, 50))
    gram = x @ x.T
    rewards = np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.6])
    e1, w1, _ = two_pass_weights(rewards, gram, 0.0, 2.0)
    for scale in (1e-6, 1e4):  # sigma^2 numel is far below 1 for real layers
        e2, w2, _ = two_pass_weights(rewards, scale * gram, 0.0, 2.0)
        np.testing.assert_array_equal(e1, e2)
        np.testing.assert_allclose(w1, w2, rtol=1e-9)
    with pytest.raises(ValueError, match=r"^alpha_units must be 'member_norm' or 'raw', got "
                                         r"'meters'$"):
        stage1_coefficients(rewards, gram, np.ones(6), 0.5, 1.0, "meters")


def test_the_gram_sums_over_every_perturbed_parameter():
    from corp.method.consolidate import named_shapes_gram
    shapes = [("a.weight", (5, 3)), ("b.weight", (4,)), ("c.weight", (2, 2))]
    seeds = [7, 8, 9]
    eps = np.stack([np.concatenate([ck.gaussian_noise(shape, parameter_key(s, name)).double()
                                    .flatten().numpy() for name, shape in shapes])
                    for s in seeds])
    np.testing.assert_allclose(named_shapes_gram(shapes, seeds), eps @ eps.T, rtol=1e-5)


def test_the_consolidator_scores_the_current_model_itself():
    seen = []

    def evaluator(model, examples):
        seen.append(model)
        return reward_scores(np.zeros(len(examples)))
    cons = _consolidator(evaluator=evaluator)
    cons.score(cons.probe)
    cons.score(cons.probe, Member.single(3, SIGMA))
    assert seen == [cons.perturber.model] * 2


def test_a_population_without_reward_signal_returns_the_base_model_saying_why():
    from corp_helpers import records_with_rewards
    cons = _consolidator()
    result = cons.run(records_with_rewards([0.5, 0.5, 0.5]))
    assert result.update is None and result.decisions == []
    assert result.reason == ("all members have the same train reward: there is no reward signal "
                             "to consolidate; returning the base model")


def test_the_consolidators_splits_and_refusal():
    pert = _planted_perturber()
    train = [Example(f"t{i}", "1") for i in range(9)]
    val = [Example(f"v{i}", "1") for i in range(7)]
    cons = Consolidator(pert, None, {"train": train, "val": val, "test": []}, CorpConfig())
    assert cons.progress is True  # progress bars unless asked otherwise
    # train: two halves (selection, gate); validation: probe = first half, gate = the rest
    assert (len(cons.selection), len(cons.gate_half)) == (4, 5)
    assert sorted(e.prompt for e in cons.selection + cons.gate_half) == sorted(
        e.prompt for e in train)
    assert (cons.probe, cons.gate) == (val[:3], val[3:])
    with pytest.raises(ValueError, match=r"^CoRP needs at least 4 train and 4 validation "
                                         r"examples \(train is split into selection/gate halves, "
                                         r"validation into probe/gate\)$"):
        Consolidator(pert, None, {"train": train, "val": val[:3], "test": []}, CorpConfig())


def test_the_released_result_says_how_many_stage2_updates_it_accepted():
    from corp_helpers import records_with_rewards
    cfg = CorpConfig.released(quantiles=(0.5,), betas=(1.0,), alphas=(1.0,), stage2_members=4,
                              stage2_rounds=2)
    cons = _scripted(lambda split, current: _always_better(
        "selection" if split == "other" else split, current), cfg)
    result = cons.run(records_with_rewards([0.1, 0.3, 0.2, 0.5, 0.4, 0.6], sigma=SIGMA))
    assert [(d.stage, bool(d.accepted)) for d in result.decisions] == [
        ("stage1", True), ("stage2", True), ("stage2", True)]
    assert result.reason == ("released procedure: Stage 1 committed ungated, 2 Stage-2 "
                             "update(s) accepted")


def test_released_stage2_a_repeated_merge_does_not_end_the_sweep():
    # betas 1, 1, 5 over local members with different selection rewards: the second merge
    # repeats the first and is skipped; the third differs and is proposed
    n = 40

    def script(split, current, i):
        if split == "selection" and not current and i < 4:  # the 4 local members
            return _ones(n, (0, i + 1))
        return _always_better(split, current)
    cfg = CorpConfig.released(quantiles=(0.5,), betas=(1.0, 1.0, 5.0), stage2_members=4,
                              stage2_rounds=1)
    cons = _consolidator(cfg, _ScriptedScores, 2 * n, script=script)
    cons.released_stage2(None, _CLOUD, SIGMA, 0.5)
    assert cons.decisions[0].detail["proposals"] == 6


def test_gated_stage2_accepts_an_unchanged_share_of_correct_answers():
    """The probe's rewards rise (LCB > 0) and the share of correct answers stays at 10/40:
    accepted (the share must not drop; it need not rise)."""
    partial = _probe_rewards(0.6 * _ones(40, (0, 10)),
                             0.6 * _ones(40, (0, 10)) + 0.4 * _ones(40, (10, 40)))
    cons, update = _gated_stage2_run(partial, stage2_rounds=1)
    (d,) = cons.decisions
    assert (d.detail["probe_correct_share"], d.detail["probe_correct_share_before"]) == (0.25,
                                                                                          0.25)
    assert d.accepted and update is not None
    assert d.detail["step_norm"] == 0.5 and d.detail["cloud_members"] == 4


def test_a_one_member_cloud_proposes_isotropic_members_only():
    cons = _consolidator(CorpConfig(stage2_members=3))
    # one member helped: the cloud has no spread, so no principal direction
    seeds, rows = cons.sample_proposals(([11], np.array([[SIGMA]]), np.ones(1)), SIGMA, 0.5, 0)
    assert len(seeds) == 4 and seeds[0] == 11 and rows.shape == (3, 4)
    np.testing.assert_array_equal(rows[:, 0], 0.0)
    np.testing.assert_allclose(rows[:, 1:], np.eye(3) * SIGMA * np.sqrt(0.5))


def test_consolidate_starts_from_the_base_even_with_a_member_left_applied():
    from corp_helpers import records_with_rewards
    pert = _planted_perturber()
    original = {name: p.detach().clone() for name, p in pert.params}
    pert._take_backup()
    pert.add_(Member.single(5, 0.5))  # a caller left a member applied in place
    examples = [Example(f"e{i}", "1") for i in range(8)]
    result = consolidate(pert, None, {"train": examples, "val": examples, "test": []},
                         records_with_rewards([0.5, 0.5, 0.5]))
    assert result.update is None
    for name, p in pert.params:  # the model is the base again, not the member
        assert torch.equal(p, original[name])
