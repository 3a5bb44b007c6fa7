"""CoRP: fold a rewarded population into one model (shared/corp-method.md; choices documented here).

Every perturbation is a coefficient vector over seeds: delta = sum_j c_j eps(seed_j) on every
perturbed parameter. Geometry (norms, alignment, dispersion, principal directions) uses the EXACT
inner products <eps_i, eps_j> summed over the perturbed parameters, from corp_kernels.noise_gram,
instead of assuming distinct seeds are orthogonal.

Stage 1 (two-pass merge): for each elite quantile q and temperature beta, pass-1 weights
softmax(beta r) over the elite give a provisional mean m; alignment a_i = cos(delta_i, m) and
dispersion d_i = |delta_i|^2 - <delta_i, m/|m|>^2; pass-2 weights softmax(beta r + z(a) - z(d))
give Delta. The step alpha and (q, beta) are chosen by mean reward on the probe split. Unlike the
released code, Stage 1 is committed only if it passes the gate (below) on the gate split.

Stage 2 (gated local search around the current model): proposals
    delta = sigma * (sqrt(lam) * eps(new seed) + sqrt(1 - lam) * sqrt(D) * sum_k sqrt(l_k / sum l) z_k u_k)
with u_k unit-norm principal directions of the search cloud (eigenvalues l_k), D the number of
perturbed weights and z_k ~ N(0, 1): both parts have expected energy sigma^2 D times their share
(the released code scales the low-rank part by sigma twice, which makes the sampler effectively
isotropic). sigma starts at the population's best-scoring sigma (highest mean train reward), as
released. Members are scored on the selection half of the train split by
(fixes - 2 * regressions) / n against the current model, where an answer is "correct" when its
reward is above 0.5 (CORRECT_ABOVE, the released threshold: partial-credit tasks can fix and
regress too). They are merged with the two-pass rule, and the merge is rescaled to the Stage-1
step: the same units as Stage 1 (a weighted mean of K near-orthogonal proposals is ~1/sqrt(K) of
one member long, so gating the raw mean tested steps near zero). The merge passes the gate if on the
gate half, at the Stage-1 step, the fix/regression score is > 0 AND the paired lower confidence
bound (mean - z * SE of per-example reward differences) is > 0. A line search over
{0.5, 1, 2} x the Stage-1 step on the probe split follows; the step is accepted only if the probe's
paired LCB is > 0 and the probe's share of correct answers does not drop. Every round rebuilds the
search cloud from the members that helped (score > 0), weighted by softmax(beta * score), accepted
or not (the released code also targets an effective sample size, 16 -> 4; we do not). A rejection
halves sigma; lam grows (more isotropic) when few members help.

If nothing passes, the base model is returned and the result says why.

Two procedures (CorpConfig.procedure):
- "gated" (the default, for deployment): everything above; every commit passes a gate.
- "released": the procedure of the released code (oooranz/CoRP, read 2026-11-26; use
  CorpConfig.released() for its grids and defaults). Stage 1: the best of the q x beta x alpha grid
  on the probe (mean reward; ties go to the first point in q, beta, alpha order), alpha a raw
  multiple of the pass-2 mean, committed WITHOUT a gate (its gate statistics are still computed,
  for the report). Stage 2 (released_stage2): members scored by fixes/regressions on the selection
  half; the two-pass merge over all members by their selection-half mean reward, swept over
  q x beta x eta (eta in {0.5, 1, 2} x the current step, which starts at the Stage-1 step and
  becomes each accepted step); proposals ranked by (selection score, fixes - regressions), the first
  to pass the gate (gate-half score > 0 and the paired LCB of the 0/1 correct differences > 0) goes
  to a {0.5, 1, 2} line search on the probe; accepted if the probe's 0/1 LCB > 0 and its mean reward
  does not drop. The cloud is rebuilt each round from the members with score > 0, weighted
  softmax(score / T) with T the smallest temperature whose effective sample size reaches
  min(#positive, 2 x (16, 8, 4)[round]); lambda moves halfway to 0.15 + 0.8 (1 - positive share)
  each round; sigma halves on a rejection and stays on an acceptance; the search stops after
  max_accept acceptances or max_reject consecutive rejections.
  Where ours still differs from the released code, deliberately:
  * geometry (norms, alignment, dispersion, step lengths) uses the exact inner products of the
    seeded noises; the released code treats distinct seeds as orthonormal ("rss" norms);
  * every parameter tensor has its own noise key (the released code reuses one seed for every
    tensor), only the decoder's 2-D linear weights are perturbed by default (all of them there),
    and a perturbed model is restored exactly from a backup (there: by subtracting the noise in
    bf16);
  * the proposal's low-rank part has its intended share of the energy (there it is scaled by
    sigma twice, which leaves the sampler isotropic);
  * splits come from our tasks (train / validation / test), not the released support/probe files.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

import corp_kernels as ck

from .perturb import Member, Perturber, parameter_key
from .population import Record, check_rewards

log = logging.getLogger("corp")


RELEASED_QUANTILES = (0.5, 0.7, 0.9)
RELEASED_BETAS = (0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
RELEASED_ALPHAS = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0)
PROCEDURES = ("gated", "released")


@dataclass
class CorpConfig:
    # Stage 1 grids (the released grids are q {.5,.7,.9}, beta {.5,1,2,5,10,20,50},
    # alpha {.5,1,2,4,8,16}; these defaults are a cheaper subset, every value a parameter).
    quantiles: tuple[float, ...] = (0.5, 0.7, 0.9)
    betas: tuple[float, ...] = (1.0, 5.0, 20.0)
    alphas: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    # "member_norm": alpha is in units of the median member's norm (|alpha * Delta| = alpha *
    # median |delta_i|, from the exact Gram), so one grid fits any elite size; averaging K
    # near-orthogonal noises shrinks |Delta| by ~sqrt(K), which the released raw grid
    # ("raw": theta + alpha * Delta) compensates only for the elite sizes it was tuned on.
    alpha_units: str = "member_norm"
    gate_z: float = 1.0  # LCB = mean - gate_z * SE
    # Stage 2
    stage2_rounds: int = 3
    stage2_max_accept: int = 2
    stage2_max_reject: int = 2
    stage2_members: int = 100  # local members per round, as released
    stage2_rank: int = 8
    stage2_lambda: float = 0.5  # isotropic share of the proposal energy, adapted per round
    stage2_sigma: float | None = None  # default: the population's best-scoring sigma
    # Stage-2 line search, in multiples of the Stage-1 step's norm (as released)
    stage2_alphas: tuple[float, ...] = (0.5, 1.0, 2.0)
    regression_weight: float = 2.0
    seed: int = 0  # splits of the train set and Stage-2 seeds
    procedure: str = "gated"  # or "released" (see the module docstring)

    def __post_init__(self):
        if self.procedure not in PROCEDURES:
            raise ValueError(f"procedure must be one of {PROCEDURES}, got {self.procedure!r}")

    @classmethod
    def released(cls, **overrides) -> "CorpConfig":
        """The released code's procedure with its run.sh defaults: the full 126-point Stage-1 grid,
        raw alpha, 100 local members, regression weight 2. Overrides win (e.g. smaller grids)."""
        defaults = dict(procedure="released", quantiles=RELEASED_QUANTILES, betas=RELEASED_BETAS,
                        alphas=RELEASED_ALPHAS, alpha_units="raw", stage2_members=100,
                        stage2_rounds=3, stage2_max_accept=2, stage2_max_reject=2,
                        stage2_alphas=(0.5, 1.0, 2.0), regression_weight=2.0, gate_z=1.0)
        return cls(**{**defaults, **overrides})


@dataclass
class Decision:
    stage: str
    accepted: bool
    detail: dict = field(default_factory=dict)

    def __post_init__(self):
        # A gate's numpy bool used to reach JSON as the string "False" (json's default=str), which
        # reads back truthy: reports said "accepted" for rejected steps. Store a real bool, and
        # read such records right.
        if isinstance(self.accepted, str):
            if self.accepted not in ("True", "False"):
                raise ValueError(f"decision {self.stage}: accepted={self.accepted!r}")
            self.accepted = self.accepted == "True"
        self.accepted = bool(self.accepted)


def member_from_json(obj: dict | None) -> Member | None:
    """The Member of `member_json`'s output (seeds are written as strings: 63-bit integers do not
    survive a JSON reader that parses numbers as doubles)."""
    if obj is None:
        return None
    return Member(tuple(int(s) for s in obj["seeds"]), tuple(float(c) for c in obj["coeffs"]))


def member_json(member: Member | None) -> dict | None:
    return None if member is None else {"seeds": [str(s) for s in member.seeds],
                                        "coeffs": list(member.coeffs)}


@dataclass
class ConsolidationResult:
    update: Member | None  # the committed update over seeds; None = the base model
    decisions: list[Decision]
    reason: str
    # The best Stage-1 candidate on the probe, committed or not: what the gates were asked about,
    # so a report can show its test score beside the gated result ("rejected, and rightly so?").
    candidate: Member | None = None

    def to_json(self) -> dict:
        return {"update": member_json(self.update), "candidate": member_json(self.candidate),
                "reason": self.reason, "decisions": [asdict(d) for d in self.decisions]}

    @classmethod
    def from_json(cls, obj: dict) -> "ConsolidationResult":
        return cls(member_from_json(obj.get("update")),
                   [Decision(**d) for d in obj.get("decisions", [])], obj.get("reason", ""),
                   member_from_json(obj.get("candidate")))


# --- geometry over seeds -------------------------------------------------------------------------


def seed_gram(perturber: Perturber, seeds: Sequence[int]) -> np.ndarray:
    """sum over perturbed parameters of <eps_i, eps_j> (float64 numpy)."""
    return named_shapes_gram([(name, tuple(p.shape)) for name, p in perturber.params], seeds)


def named_shapes_gram(named_shapes, seeds: Sequence[int]) -> np.ndarray:
    """The same from (name, shape) pairs alone: no weights are needed, only their shapes."""
    total = None
    for name, shape in named_shapes:
        g = ck.noise_gram(tuple(shape), [parameter_key(s, name) for s in seeds]).numpy()
        total = g if total is None else total + g
    return total


def stage1_coefficients(rewards: np.ndarray, gram: np.ndarray, sigmas: np.ndarray, q: float,
                        beta: float, alpha_units: str = "member_norm"):
    """(elite, pass-2 weights, per-member coefficients for alpha = 1) of the two-pass merge;
    `gram` holds the inner products of the members' perturbations sigma_i eps_i."""
    elite, w2, diag = two_pass_weights(rewards, gram, q, beta)
    coeffs = np.zeros(len(rewards))
    coeffs[elite] = w2 * sigmas[elite]
    if alpha_units == "member_norm":
        g_e = gram[np.ix_(elite, elite)]
        coeffs *= np.median(np.sqrt(np.diag(g_e))) / np.sqrt(w2 @ g_e @ w2)
    elif alpha_units != "raw":
        raise ValueError(f"alpha_units must be 'member_norm' or 'raw', got {alpha_units!r}")
    return elite, w2, coeffs


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return np.zeros_like(x) if sd == 0 or not np.isfinite(sd) else (x - x.mean()) / sd


def two_pass_weights(rewards: np.ndarray, gram: np.ndarray, q: float, beta: float):
    """(elite indices, pass-2 weights, diagnostics) for members with Gram `gram` (members x
    members, exact inner products of their perturbations)."""
    elite = np.flatnonzero(rewards >= np.quantile(rewards, q))
    r, g = rewards[elite], gram[np.ix_(elite, elite)]
    w1 = softmax(beta * r)
    dot_m = g @ w1  # <delta_i, m>
    m_sq = float(w1 @ g @ w1)
    sq = np.clip(np.diag(g), 1e-300, None)
    align = dot_m / np.sqrt(sq * max(m_sq, 1e-300))
    disp = sq - dot_m ** 2 / max(m_sq, 1e-300)
    w2 = softmax(beta * r + zscore(align) - zscore(disp))
    return elite, w2, {"alignment": align.tolist(), "dispersion_rel": (disp / sq).tolist()}


Z_POWER_80 = 0.8416212335729143  # the standard normal's 80% quantile


def paired_stats(new: np.ndarray, old: np.ndarray, z: float) -> dict:
    """Paired comparison of per-example rewards: mean difference, its standard error, the lower
    confidence bound mean - z * SE that the gate tests, and `mde80`: the true mean gain that would
    pass (LCB > 0) with 80% probability at this n and this spread of differences,
    (z + z_0.8) * SD / sqrt(n). A rejection with gain 0.03 and mde80 0.14 says "too few examples
    to tell", not "no gain"."""
    diff = np.asarray(new, float) - np.asarray(old, float)
    n = len(diff)
    sd = float(diff.std(ddof=1)) if n > 1 else float("inf")
    se = sd / np.sqrt(n) if n > 1 else float("inf")
    mean = float(diff.mean())
    return {"mean_diff": mean, "se": se, "lcb": mean - z * se, "n": n,
            "mde80": (z + Z_POWER_80) * se}


# An answer counts as correct when its reward is above this (the released code's threshold). One
# notion of "correct" for every gate: `Scores.correct` (reward == 1) would make partial-credit
# tasks (writing: 6% exactly right) almost never fix or regress anything.
CORRECT_ABOVE = 0.5


def is_correct(rewards) -> np.ndarray:
    return np.asarray(rewards, float) > CORRECT_ABOVE


def fix_regression_score(new_rewards, old_rewards, regression_weight: float) -> float:
    """(fixes - regression_weight * regressions) / n between two per-example reward vectors."""
    new_c, old_c = is_correct(new_rewards), is_correct(old_rewards)
    fixes = np.sum(new_c & ~old_c)
    regressions = np.sum(~new_c & old_c)
    return float((fixes - regression_weight * regressions) / len(new_c))


def best_scoring_sigma(records: Sequence[Record]) -> float:
    """The sigma whose members have the highest mean train reward (ties: the smaller sigma)."""
    by_sigma: dict[float, list[float]] = {}
    for r in records:
        by_sigma.setdefault(float(r.sigma), []).append(r.reward)
    return max(sorted(by_sigma), key=lambda s: np.mean(by_sigma[s]))


def effective_sample_size(weights: np.ndarray) -> float:
    return float(1.0 / np.sum(np.square(weights)))


def ess_weights(scores: np.ndarray, target: float) -> np.ndarray:
    """softmax(scores / T) with T the smallest temperature whose effective sample size is at least
    `target` (uniform weights when target >= len(scores) or the scores are all equal)."""
    scores = np.asarray(scores, float)
    n = len(scores)
    if target >= n or np.ptp(scores) == 0:
        return np.full(n, 1.0 / n)
    def ess(t):
        return effective_sample_size(softmax(scores / t))
    low, high = 1e-12, 1.0
    while ess(high) < target:  # ESS grows with T towards n
        low, high = high, high * 2
    for _ in range(60):
        mid = 0.5 * (low + high)
        low, high = (mid, high) if ess(mid) < target else (low, mid)
    return softmax(scores / high)


def released_ess_target(round_index: int, rounds: int, positives: int) -> float:
    """min(#positive, 2 x the 16 -> 8 -> 4 geometric schedule), as the released code does."""
    frac = round_index / max(rounds - 1, 1)
    schedule = 16.0 * (4.0 / 16.0) ** frac
    return float(min(positives, 2 * schedule))


def released_next_lambda(lam: float, positive_share: float) -> float:
    target = float(np.clip(0.15 + 0.8 * (1.0 - positive_share), 0.15, 0.95))
    return float(np.clip(0.5 * lam + 0.5 * target, 0.05, 0.95))


def fixes_minus_regressions(new_rewards, old_rewards) -> int:
    new_c, old_c = is_correct(new_rewards), is_correct(old_rewards)
    return int(np.sum(new_c & ~old_c) - np.sum(~new_c & old_c))


def coefficient_norm(coeffs: np.ndarray, gram: np.ndarray) -> float:
    """|sum_j coeffs_j eps_j| under the exact Gram of the eps_j."""
    return float(np.sqrt(max(coeffs @ gram @ coeffs, 0.0)))


def combine(seeds: Sequence[int], rows: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Coefficients over `seeds` of sum_i weights[i] * member_i, member_i = rows[i] @ eps."""
    return weights @ rows


def as_member(seeds: Sequence[int], coeffs: np.ndarray, scale: float = 1.0) -> Member:
    keep = np.flatnonzero(coeffs != 0)
    return Member(tuple(int(seeds[i]) for i in keep), tuple(float(scale * coeffs[i]) for i in keep))


def add_members(a: Member | None, b: Member) -> Member:
    acc: dict[int, float] = {}
    for m in ([a] if a is not None else []) + [b]:
        for s, c in zip(m.seeds, m.coeffs):
            acc[s] = acc.get(s, 0.0) + c
    return Member(tuple(acc), tuple(acc.values()))


# --- the two stages -------------------------------------------------------------------------------


def probe_split(splits: dict) -> list:
    """CoRP's probe: the first half of the validation split (Stage-1 selection, Stage-2 line
    search, and the export's choice of rank)."""
    val = list(splits["val"])
    return val[:len(val) // 2]


class Consolidator:
    def __init__(self, perturber: Perturber, evaluator, splits: dict, config: CorpConfig,
                 progress: bool = True):
        self.perturber, self.evaluator, self.config = perturber, evaluator, config
        self.progress = progress
        train = list(splits["train"])
        order = list(range(len(train)))
        random.Random(f"corp-stage2-split-{config.seed}").shuffle(order)
        half = len(order) // 2
        self.selection = [train[i] for i in sorted(order[:half])]
        self.gate_half = [train[i] for i in sorted(order[half:])]
        val = list(splits["val"])
        self.probe = probe_split(splits)  # Stage-1 selection and Stage-2 line search
        self.gate = val[len(val) // 2:]  # Stage-1 gate
        if min(len(self.probe), len(self.gate), len(self.selection), len(self.gate_half)) < 2:
            raise ValueError("CoRP needs at least 4 train and 4 validation examples (train is "
                             "split into selection/gate halves, validation into probe/gate)")
        self.decisions: list[Decision] = []
        self.stage1_step_norm: float | None = None  # set by stage1: Stage 2's unit of step
        self.stage1_candidate: Member | None = None  # set by stage1: its best grid point

    def score(self, examples, member: Member | None = None):
        if member is None:
            return self.evaluator(self.perturber.model, examples)
        with self.perturber.inplace(member):
            return self.evaluator(self.perturber.model, examples)

    def commit(self, update: Member | None, delta: Member) -> Member:
        self.perturber.restore_()
        self.perturber.add_(delta)
        self.perturber.rebase()
        return add_members(update, delta)

    # Stage 1 ---------------------------------------------------------------------------------

    def stage1(self, records: Sequence[Record], gram: np.ndarray):
        """`gram`: exact inner products of the members' perturbations sigma_i eps_i."""
        cfg = self.config
        seeds = [r.seed for r in records]
        rewards = np.array([r.reward for r in records])
        sig = np.array([r.sigma for r in records])
        base_probe = self.score(self.probe)
        candidates = []
        seen = set()
        for q in cfg.quantiles:
            for beta in cfg.betas:
                elite, w2, coeffs = stage1_coefficients(rewards, gram, sig, q, beta,
                                                        cfg.alpha_units)
                key = (tuple(elite), tuple(np.round(w2, 12)))
                if key in seen:
                    continue
                seen.add(key)
                for alpha in cfg.alphas:
                    member = as_member(seeds, coeffs, alpha)
                    s = self.score(self.probe, member)
                    # Ties: gated prefers the shorter step; released keeps the first point visited.
                    tie = -alpha if cfg.procedure == "gated" else -len(candidates)
                    candidates.append((s.reward, tie, q, beta, alpha, member, len(elite), s))
        best = max(candidates, key=lambda c: (c[0], c[1]))
        reward, _, q, beta, alpha, member, n_elite, s = best
        # The norm of the best Stage-1 step (committed or not): Stage 2's unit of step.
        seed_only_gram = gram / np.outer(sig, sig)
        coeff_by_seed = dict(zip(member.seeds, member.coeffs))
        step = np.array([coeff_by_seed.get(sd, 0.0) for sd in seeds])
        self.stage1_step_norm = coefficient_norm(step, seed_only_gram)
        self.stage1_candidate = member
        detail = {"q": q, "beta": beta, "alpha": alpha, "elite": n_elite,
                  "probe_reward": reward, "probe_reward_base": base_probe.reward,
                  "candidates": len(candidates), "step_norm": self.stage1_step_norm}
        if cfg.procedure == "released":
            # Committed without a gate; the gate split's statistics are kept for the report.
            base_gate, cand_gate = self.score(self.gate), self.score(self.gate, member)
            detail.update(gate=paired_stats(cand_gate.rewards, base_gate.rewards, cfg.gate_z),
                          gate_reward=cand_gate.reward, gate_reward_base=base_gate.reward,
                          why="released procedure: Stage 1 is committed without a gate")
            self.decisions.append(Decision("stage1", True, detail))
            return member, (q, beta)
        if reward <= base_probe.reward:
            self.decisions.append(Decision("stage1", False, {**detail, "why": "no candidate beats "
                                                             "the base model on the probe split"}))
            return None, (q, beta)
        base_gate, cand_gate = self.score(self.gate), self.score(self.gate, member)
        stats = paired_stats(cand_gate.rewards, base_gate.rewards, cfg.gate_z)
        passed = stats["mean_diff"] > 0 and stats["lcb"] > 0
        detail.update(gate=stats, gate_reward=cand_gate.reward, gate_reward_base=base_gate.reward)
        if not passed:
            detail["why"] = "gate: paired lower confidence bound on the gate split is not > 0"
        self.decisions.append(Decision("stage1", passed, detail))
        log.info("stage 1: q=%s beta=%s alpha=%s probe %.4f (base %.4f), gate LCB %.4f -> %s", q,
                 beta, alpha, reward, base_probe.reward, stats["lcb"],
                 "commit" if passed else "reject")
        return (member if passed else None), (q, beta)

    # Stage 2 ---------------------------------------------------------------------------------

    def principal_directions(self, seeds, rows, weights, rank):
        """Unit-norm (under the exact Gram) principal directions of the weighted cloud of members
        rows @ eps, as coefficient rows over `seeds`, and their eigenvalues."""
        gram = seed_gram(self.perturber, seeds)
        mean = weights @ rows
        centered = rows - mean
        sw = np.sqrt(weights)[:, None]
        m = (sw * centered) @ gram @ (sw * centered).T
        lam, vec = np.linalg.eigh(m)
        order = np.argsort(lam)[::-1][:rank]
        lam, vec = lam[order], vec[:, order]
        keep = lam > lam.max() * 1e-9 if len(lam) and lam.max() > 0 else np.zeros(0, bool)
        lam, vec = lam[keep], vec[:, keep]
        directions = (vec.T @ (sw * centered)) / np.sqrt(lam)[:, None]
        return directions, lam

    def stage2(self, update: Member | None, cloud, q: float, beta: float, sigma: float):
        cfg = self.config
        if self.stage1_step_norm is None:
            raise RuntimeError("stage2 needs the Stage-1 step as its unit: run stage1 first")
        lam_mix = cfg.stage2_lambda
        accepted = rejected = 0
        for rnd in range(cfg.stage2_rounds):
            if accepted >= cfg.stage2_max_accept or rejected >= cfg.stage2_max_reject:
                break
            cloud_rows = cloud[1]
            seeds, rows = self.sample_proposals(cloud, sigma, lam_mix, rnd)
            cur_sel = self.score(self.selection)
            scores = np.array([fix_regression_score(
                self.score(self.selection, as_member(seeds, row)).rewards, cur_sel.rewards,
                cfg.regression_weight) for row in rows])
            gram = seed_gram(self.perturber, seeds)
            member_gram = rows @ gram @ rows.T
            elite, w2, _ = two_pass_weights(scores, member_gram, q, beta)
            merged = combine(seeds, rows[elite], w2)
            # In Stage-1 units: the merge rescaled to the norm of the Stage-1 step.
            merged_norm = coefficient_norm(merged, gram)
            unit = merged * (self.stage1_step_norm / merged_norm) if merged_norm > 0 else merged
            cur_gate = self.score(self.gate_half)
            cand_gate = self.score(self.gate_half, as_member(seeds, unit))
            gate_score = fix_regression_score(cand_gate.rewards, cur_gate.rewards,
                                              cfg.regression_weight)
            stats = paired_stats(cand_gate.rewards, cur_gate.rewards, cfg.gate_z)
            detail = {"round": rnd, "sigma": sigma, "lambda": lam_mix,
                      "members_helping": float(np.mean(scores > 0)), "gate_score": gate_score,
                      "gate": stats, "cloud_members": len(cloud_rows),
                      "merge_norm_raw": merged_norm, "step_norm": self.stage1_step_norm}
            ok = gate_score > 0 and stats["lcb"] > 0
            if ok:
                cur_probe = self.score(self.probe)
                best = None
                for alpha in cfg.stage2_alphas:
                    s = self.score(self.probe, as_member(seeds, unit, alpha))
                    if best is None or s.reward > best[1].reward:
                        best = (alpha, s)
                alpha, s = best
                probe = paired_stats(s.rewards, cur_probe.rewards, cfg.gate_z)
                correct_share = float(is_correct(s.rewards).mean())
                correct_share_before = float(is_correct(cur_probe.rewards).mean())
                ok = probe["lcb"] > 0 and correct_share >= correct_share_before
                detail.update(alpha=alpha, probe=probe, probe_correct_share=correct_share,
                              probe_correct_share_before=correct_share_before)
                if not ok:
                    detail["why"] = ("line search: probe LCB not > 0 or the probe's share of "
                                     "correct answers dropped")
            else:
                detail["why"] = "gate: fix/regression score or paired LCB on the gate half not > 0"
            self.decisions.append(Decision("stage2", ok, detail))
            log.info("stage 2 round %d: sigma %.2g, lambda %.2f, %.0f%% members help, gate %.4f "
                     "(LCB %.4f) -> %s", rnd, sigma, lam_mix, 100 * detail["members_helping"],
                     gate_score, stats["lcb"], "accept" if ok else "reject")
            if ok:
                update = self.commit(update, as_member(seeds, unit, alpha))
                accepted += 1
            else:
                rejected += 1
                sigma /= 2
            # The next round's cloud: this round's members that helped, accepted or not (the
            # cloud's directions are expressed around any model; their coefficients are over
            # `seeds`). Nobody helped: keep the previous cloud.
            helped = np.flatnonzero(scores > 0)
            if len(helped):
                cloud = (seeds, rows[helped], softmax(beta * scores[helped]))
            # fewer good members -> a more isotropic proposal
            helping = detail["members_helping"]
            lam_mix = min(0.9, lam_mix + 0.2) if helping < 0.25 else max(0.1, lam_mix - 0.1)
        return update

    def sample_proposals(self, cloud, sigma: float, lam_mix: float, rnd: int):
        """(seeds, rows): stage2_members local members around the current model, each a row of
        coefficients over `seeds` = the cloud's seeds + one fresh seed per member."""
        cfg = self.config
        cloud_seeds, cloud_rows, cloud_w = cloud
        dirs, lam = self.principal_directions(cloud_seeds, cloud_rows, cloud_w, cfg.stage2_rank)
        rng = np.random.default_rng([cfg.seed, rnd, 0x5EC0])
        new_seeds = [int(x) for x in rng.integers(0, 2**63 - 1, cfg.stage2_members, dtype=np.int64)]
        seeds = list(cloud_seeds) + new_seeds
        rows = np.zeros((len(new_seeds), len(seeds)))
        share = np.sqrt(lam / lam.sum()) if len(lam) else np.zeros(0)
        for i in range(len(new_seeds)):
            rows[i, len(cloud_seeds) + i] = sigma * np.sqrt(lam_mix)
            if len(lam):
                z = rng.standard_normal(len(lam))
                rows[i, :len(cloud_seeds)] = sigma * np.sqrt((1 - lam_mix) * self.perturber.numel) \
                    * ((share * z) @ dirs)
        return seeds, rows

    def released_stage2(self, update: Member | None, cloud, sigma: float, eta: float):
        """Stage 2 as the released code runs it (module docstring); `eta` is the Stage-1 step."""
        cfg = self.config
        lam_mix = cfg.stage2_lambda
        accepted = consecutive_rejects = 0
        for rnd in range(cfg.stage2_rounds):
            if accepted >= cfg.stage2_max_accept or consecutive_rejects >= cfg.stage2_max_reject:
                break
            seeds, rows = self.sample_proposals(cloud, sigma, lam_mix, rnd)
            cur_sel = self.score(self.selection)
            member_sel = [self.score(self.selection, as_member(seeds, row)) for row in rows]
            scores = np.array([fix_regression_score(m.rewards, cur_sel.rewards,
                                                    cfg.regression_weight) for m in member_sel])
            mean_rewards = np.array([m.reward for m in member_sel])
            gram = seed_gram(self.perturber, seeds)
            member_gram = rows @ gram @ rows.T
            # The sweep: two-pass merges over all members by selection-half mean reward.
            cur_gate = self.score(self.gate_half)
            proposals, seen = [], set()
            for q in cfg.quantiles:
                for beta in cfg.betas:
                    elite, w2, _ = two_pass_weights(mean_rewards, member_gram, q, beta)
                    merged = combine(seeds, rows[elite], w2)
                    norm = coefficient_norm(merged, gram)
                    key = (tuple(elite), tuple(np.round(w2, 12)))
                    if norm == 0 or key in seen:
                        continue
                    seen.add(key)
                    for mult in cfg.stage2_alphas:
                        step = mult * eta
                        member = as_member(seeds, merged, step / norm)
                        sel = self.score(self.selection, member)
                        gate = self.score(self.gate_half, member)
                        proposals.append({
                            "q": q, "beta": beta, "eta": step, "member": member,
                            "selection_score": fix_regression_score(
                                sel.rewards, cur_sel.rewards, cfg.regression_weight),
                            "net_fixes": fixes_minus_regressions(sel.rewards, cur_sel.rewards),
                            "gate_score": fix_regression_score(gate.rewards, cur_gate.rewards,
                                                               cfg.regression_weight),
                            "gate": paired_stats(is_correct(gate.rewards),
                                                 is_correct(cur_gate.rewards), cfg.gate_z)})
            proposals.sort(key=lambda p: (p["selection_score"], p["net_fixes"]), reverse=True)
            passing = [p for p in proposals if p["gate_score"] > 0 and p["gate"]["lcb"] > 0]
            chosen = passing[0] if passing else (proposals[0] if proposals else None)
            positive_share = float(np.mean(scores > 0))
            detail = {"round": rnd, "sigma": sigma, "lambda": lam_mix, "procedure": "released",
                      "members_helping": positive_share, "proposals": len(proposals),
                      "passing_gate": len(passing), "cloud_members": len(cloud[1]), "eta": eta}
            ok = bool(passing)
            if chosen is not None:
                detail.update({k: chosen[k] for k in ("q", "beta", "selection_score",
                                                      "gate_score", "gate")}, step=chosen["eta"])
            if ok:
                cur_probe = self.score(self.probe)
                best = None
                for mult in cfg.stage2_alphas:  # ties go to the smallest multiplier
                    member = as_member(chosen["member"].seeds, np.array(chosen["member"].coeffs),
                                       mult)
                    s = self.score(self.probe, member)
                    if best is None or s.reward > best[2].reward:
                        best = (mult, member, s)
                mult, member, s = best
                probe = paired_stats(is_correct(s.rewards), is_correct(cur_probe.rewards),
                                     cfg.gate_z)
                ok = probe["lcb"] > 0 and s.reward >= cur_probe.reward
                detail.update(line_search=mult, probe=probe, probe_reward=s.reward,
                              probe_reward_before=cur_probe.reward)
                if not ok:
                    detail["why"] = "line search: probe LCB not > 0 or probe reward dropped"
            else:
                detail["why"] = "no proposal of the sweep passed the gate"
            self.decisions.append(Decision("stage2", ok, detail))
            log.info("stage 2 (released) round %d: sigma %.2g, %d/%d proposals pass the gate -> %s",
                     rnd, sigma, len(passing), len(proposals), "accept" if ok else "reject")
            if ok:
                update = self.commit(update, member)
                eta = mult * chosen["eta"]
                accepted += 1
                consecutive_rejects = 0
            else:
                consecutive_rejects += 1
                sigma /= 2
            helped = np.flatnonzero(scores > 0)
            if len(helped):
                target = released_ess_target(rnd, cfg.stage2_rounds, len(helped))
                cloud = (seeds, rows[helped], ess_weights(scores[helped], target))
            lam_mix = released_next_lambda(lam_mix, positive_share)
        return update

    def run(self, records: Sequence[Record]) -> ConsolidationResult:
        check_rewards(records)
        rewards = np.array([r.reward for r in records])
        if np.all(rewards == rewards[0]):
            return ConsolidationResult(None, [], "all members have the same train reward: there "
                                       "is no reward signal to consolidate; returning the base "
                                       "model")
        sig = np.array([r.sigma for r in records])
        # One Gram over the whole population, shared by Stage 1 and Stage 2's first cloud: each
        # costs N noises per perturbed weight.
        gram = seed_gram(self.perturber, [r.seed for r in records]) * np.outer(sig, sig)
        update, (q, beta) = self.stage1(records, gram)
        if update is not None:
            self.commit(None, update)
        elite, w2, _ = two_pass_weights(rewards, gram, q, beta)
        seeds = [records[i].seed for i in elite]
        rows = np.diag(sig[elite])
        sigma = self.config.stage2_sigma or best_scoring_sigma(records)
        if self.config.stage2_rounds > 0 and self.config.procedure == "released":
            update = self.released_stage2(update, (seeds, rows, w2), sigma,
                                          self.stage1_step_norm)
        elif self.config.stage2_rounds > 0:
            update = self.stage2(update, (seeds, rows, w2), q, beta, sigma)
        self.perturber.restore_()
        if update is None:
            reason = "no update passed its gate (details in decisions); returning the base model"
        elif self.config.procedure == "released":
            reason = (f"released procedure: Stage 1 committed ungated, "
                      f"{sum(d.accepted for d in self.decisions if d.stage == 'stage2')} Stage-2 "
                      "update(s) accepted")
        else:
            reason = f"committed {sum(d.accepted for d in self.decisions)} gated update(s)"
        return ConsolidationResult(update, self.decisions, reason, self.stage1_candidate)


def consolidate(perturber: Perturber, evaluator, splits: dict, records: Sequence[Record],
                config: CorpConfig | None = None) -> ConsolidationResult:
    """Run CoRP; the model is left as it was (the result holds the update as seeds)."""
    if perturber._backup is not None:
        perturber.restore_()
    perturber.rebase()
    perturber._take_backup()
    base = perturber._backup
    try:
        return Consolidator(perturber, evaluator, splits, config or CorpConfig()).run(records)
    finally:
        perturber._backup = base
        perturber.restore_()
