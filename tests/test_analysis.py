"""The split-half analysis on planted populations with known answers (no model: the members'
noise is the project's own seeded noise, and rewards are built from it)."""

import json
import math

import numpy as np
import pytest
import torch

import corp_kernels as ck
from corp.method.analysis import (_halves, _overlaps, _top_left_subspace, _weighted_sums, adjust,
                                  correct, example_space_row, figure, permutation_p,
                                  permutations_for, table, weight_space_row)
from corp.method.perturb import parameter_key
from corp.method.population import member_seeds

SHAPE = (48, 32)
NULL_SHAPE = (24, 16)  # 60 runs x 2 layers x 402 subspaces: 48 x 32 spent 7 s in eigh alone
SIGMA = 1e-3
ALPHA = 0.05
PERMUTATIONS = 200


def _noise_projections(seeds, name, direction: torch.Tensor) -> np.ndarray:
    """<eps_i, D> of every member's noise on layer `name`: what the analysis regenerates."""
    return np.array([float((ck.gaussian_noise(SHAPE, parameter_key(s, name)).double()
                            * direction).sum()) for s in seeds])


def _unit(matrix: torch.Tensor) -> torch.Tensor:
    return matrix / matrix.norm()


def _rank1_direction(seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return _unit(torch.randn(SHAPE[0], 1, generator=g, dtype=torch.float64)
                 @ torch.randn(1, SHAPE[1], generator=g, dtype=torch.float64))


def _full_rank_direction(seed: int) -> torch.Tensor:
    # a Gaussian 48 x 32 matrix: stable rank ~10, the "full-rank direction"
    g = torch.Generator().manual_seed(seed)
    return _unit(torch.randn(*SHAPE, generator=g, dtype=torch.float64))


def _planted_row(direction, n, rho, seed, name="planted.weight"):
    """Rewards r_i = rho <eps_i, D> + sqrt(1 - rho^2) xi_i: correlation rho with the members'
    noise along D."""
    seeds = member_seeds(n, seed)
    z = _noise_projections(seeds, name, direction)
    rewards = rho * z + math.sqrt(1 - rho ** 2) * np.random.default_rng(seed).standard_normal(n)
    row = weight_space_row(name, SHAPE, seeds, np.full(n, SIGMA), rewards, _halves(n, seed),
                           rank=4, permutations=PERMUTATIONS, seed=seed)
    return correct([row], ALPHA, "holm", seed)[0]


def _binomial_band(n: int, p: float, coverage: float = 0.99) -> tuple[int, int]:
    """Central `coverage` interval of Binomial(n, p): counts outside it have probability
    <= (1 - coverage) / 2 on each side."""
    pmf = [math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n + 1)]
    tail = (1 - coverage) / 2
    lo = next(k for k in range(n + 1) if sum(pmf[:k + 1]) > tail)
    hi = next(k for k in range(n, -1, -1) if sum(pmf[k:]) > tail)
    return lo, hi


def _independent_prompts(n_members, rng, constant=12, varying=4):
    """Reward changes of independent Bernoulli prompts: `constant` prompts every member gets
    right (change 0), `varying` prompts right with probability 1/2, independently."""
    change = np.zeros((n_members, constant + varying))
    change[:, constant:] = rng.random((n_members, varying)) < 0.5
    return change


def test_constant_prompt_artefact_is_not_structure():
    # The case: 12 constant prompts, 4 independent ones. Per-example variance alone made
    # the old analysis say "structured" in 40/40 runs (overlap 1.000 vs a row-shuffle null 0.259).
    verdicts = []
    for seed in range(10):
        rng = np.random.default_rng(seed)
        change = _independent_prompts(100, rng)
        row = correct([example_space_row(change, _halves(100, seed), 4, PERMUTATIONS, seed)],
                      ALPHA)[0]
        assert row.dims == (4, 16) and row.rank == 1  # constant prompts dropped, r <= 4 / 4
        verdicts.append(row.reproducible)
    # 10 exact level-0.05 tests: P(>= 3 rejections) = 0.012
    assert sum(verdicts) <= 2, verdicts


def test_pure_null_rejects_at_the_nominal_rate():
    # Rewards independent of the noise, prompts independent of each other (heterogeneous success
    # rates, some constant). Each run is one family: two 24 x 16 layers + the example space,
    # Holm at alpha. The old rule (mean + 2 sd of 5 draws) said "yes" for 10.3% of layers and
    # for every example row here.
    runs, per_row, family_wise, p_values = 60, [], [], []
    rates = np.array([0.0, 0.0, 0.0, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.6, 0.7, 0.9, 1.0])
    for seed in range(runs):
        rng = np.random.default_rng(1000 + seed)
        n = 100
        seeds = member_seeds(n, 1000 + seed)
        change = (rng.random((n, len(rates))) < rates).astype(float)
        rewards = change.mean(axis=1)
        halves = _halves(n, seed)
        rows = [weight_space_row(name, NULL_SHAPE, seeds, np.full(n, SIGMA), rewards, halves,
                                 4, PERMUTATIONS, seed) for name in ("a.weight", "b.weight")]
        rows.append(example_space_row(change, halves, 4, PERMUTATIONS, seed))
        rows = correct(rows, ALPHA, "holm", seed)
        per_row += [row.p_value <= ALPHA for row in rows]
        family_wise.append(any(row.reproducible for row in rows))
        p_values += [row.p_value for row in rows]
    # An exact permutation test rejects with probability (1 + floor(alpha (1+P)) - 1)/(1 + P)
    # = 10/201 ~ alpha; the 99% binomial band around it can fail on either side (an
    # anti-conservative test above, a broken p-value that never rejects below).
    level = math.floor(ALPHA * (1 + PERMUTATIONS)) / (1 + PERMUTATIONS)
    lo, hi = _binomial_band(len(per_row), level)
    print(f"null: {sum(per_row)}/{len(per_row)} rows at p <= {ALPHA} (band {lo}-{hi}), "
          f"{sum(family_wise)}/{runs} families with a Holm rejection")
    assert lo <= sum(per_row) <= hi, (sum(per_row), lo, hi)
    assert lo > 0  # the band's lower end can fail
    # Holm keeps the family-wise rate <= alpha: above the band's upper end is a failure.
    _, hi_fw = _binomial_band(runs, ALPHA)
    assert sum(family_wise) <= hi_fw, (sum(family_wise), hi_fw)
    # and the p-values are spread over (0, 1], not piled up (median of U(0,1) is 0.5)
    assert 0.35 < np.median(p_values) < 0.65


def test_planted_rank1_is_reproducible_and_low_rank():
    n = 600
    n_h = n // 2
    # twice and a half the detection threshold the table reports: rho sqrt(n_h) = 2.5 (m n)^1/4
    rho = 2.5 * (SHAPE[0] * SHAPE[1]) ** 0.25 / math.sqrt(n_h)
    for seed in (1, 2):
        row = _planted_row(_rank1_direction(seed), n, rho, seed)
        assert row.min_effect == pytest.approx(rho / 2.5)
        assert row.reproducible and row.p_value < 0.02, row
        assert row.low_rank and row.verdict == "reproducible, low rank", row
        assert row.low_rank_share > 2 * row.full_rank_share
        assert row.structured


def test_planted_full_rank_is_reproducible_but_not_low_rank():
    # Every member's reward is its noise's projection on a Gaussian 48 x 32 direction: the
    # halves reproduce it (the old test said "yes" here too), but its energy is no more
    # concentrated in 4 directions than a random full-rank signal's.
    n = 3000
    rows = [_planted_row(_full_rank_direction(seed), n, 1.0, seed) for seed in (1, 2, 3, 4)]
    assert all(row.reproducible for row in rows), [row.p_value for row in rows]
    # each "low rank" here is a level-0.05 false positive: >= 2 of 4 has probability 0.014
    assert sum(row.low_rank for row in rows) <= 1, [row.p_low_rank for row in rows]
    assert all(row.verdict in ("reproducible, not low rank", "reproducible, low rank")
               for row in rows)
    for row in rows:
        assert row.low_rank_share < 2 * row.full_rank_share


def test_planted_example_factor_is_reproducible_and_low_rank():
    # one common factor behind 16 prompts (0/1 rewards): correlated examples, a rank-1 structure
    rng = np.random.default_rng(0)
    n = 100
    factor = rng.standard_normal((n, 1))
    change = (0.7 * factor + 0.7 * rng.standard_normal((n, 16)) > 0).astype(float)
    row = correct([example_space_row(change, _halves(n, 0), 4, PERMUTATIONS, 0)], ALPHA)[0]
    assert row.verdict == "reproducible, low rank", row
    assert row.overlap > row.null_q95


def test_underpowered_rows_say_so():
    # 10 members per half cannot show a rank-1 effect in a 48 x 32 layer: (48*32)^(1/4)/sqrt(5)
    n = 10
    seeds = member_seeds(n, 0)
    rewards = np.random.default_rng(0).standard_normal(n)
    row = correct([weight_space_row("x.weight", SHAPE, seeds, np.full(n, SIGMA), rewards,
                                    _halves(n, 0), 4, PERMUTATIONS)], ALPHA)[0]
    assert row.min_effect == pytest.approx((48 * 32) ** 0.25 / math.sqrt(5))
    assert not row.powered and row.verdict == "no (could not have shown it at this N)"
    # ... and stays out of the correction family, whatever its p
    assert math.isnan(row.p_adjusted) and row.family_size == 0 and not row.reproducible


def test_p_values_corrections_and_report(tmp_path):
    assert permutation_p(0.5, np.array([0.1, 0.5, 0.7])) == pytest.approx(3 / 4)  # ties count
    assert permutation_p(0.9, np.zeros(200)) == pytest.approx(1 / 201)
    p = [0.01, 0.04, float("nan"), 0.03, 0.2]
    np.testing.assert_allclose(adjust(p, "holm"), [0.04, 0.09, np.nan, 0.09, 0.2])
    np.testing.assert_allclose(adjust(p, "bh"), [0.04, 0.04 * 4 / 3, np.nan, 0.04 * 4 / 3, 0.2])
    with pytest.raises(ValueError, match="correction"):
        adjust(p, "bonferroni")
    # 20 rows at alpha 0.05 need 1/(1+P) <= 0.0025: P >= 399
    assert permutations_for(20, 0.05) == 399 and permutations_for(3, 0.05) == 200
    n = 40
    seeds = member_seeds(n, 0)
    rng = np.random.default_rng(0)
    rows = [weight_space_row("layer.weight", SHAPE, seeds, np.full(n, SIGMA),
                             rng.standard_normal(n), _halves(n, 0), 4, PERMUTATIONS),
            example_space_row(_independent_prompts(n, rng), _halves(n, 0), 4, PERMUTATIONS)]
    rows = correct(rows, ALPHA, "bh")
    md = table(rows)
    assert "p adj (BH)" in md and "| weight | layer.weight | 4 |" in md and "ρ ≥" in md
    assert "λ² ≥" in md and "permutations" in md
    data = rows[0].to_json()
    assert {"p_value", "p_adjusted", "min_effect", "verdict", "structured"} <= set(data)
    assert not any(k.startswith("_") for k in data)
    figure(rows, str(tmp_path / "a.png"))
    assert (tmp_path / "a.png").stat().st_size > 1000


def test_large_layers_use_a_randomized_subspace_and_streamed_noise():
    # above EXACT_SVD_MAX_SIDE the subspace comes from randomized subspace iteration: with a
    # spectral gap it must match the exact SVD's
    g = torch.Generator().manual_seed(0)
    m, n, r = 200, 150, 3
    low = torch.randn(2, m, r, generator=g) @ torch.randn(2, r, n, generator=g)
    a = 3 * low + torch.randn(2, m, n, generator=g)
    got = _top_left_subspace(a, r)
    exact = torch.linalg.svd(a.double(), full_matrices=False)[0][..., :r]
    assert torch.all(_overlaps(got, exact) > 0.999)
    # a memory budget smaller than one noise tensor regenerates the noise per block: same sums
    keys = [parameter_key(s, "x") for s in member_seeds(7, 0)]
    coeffs = np.random.default_rng(0).standard_normal((5, 7))
    stacked = torch.cat(list(_weighted_sums(SHAPE, keys, coeffs, 1 << 30)))
    streamed = torch.cat(list(_weighted_sums(SHAPE, keys, coeffs, 4 * 48 * 32 * 3)))
    torch.testing.assert_close(streamed, stacked, rtol=1e-5, atol=1e-5)
    expected = ck.weighted_noise_sum(SHAPE, keys, coeffs[2].tolist())
    torch.testing.assert_close(stacked[2], expected, rtol=1e-4, atol=1e-4)


def _row(**kw):
    from corp.method.analysis import OverlapRow
    base = dict(space="weight", name="model.layers.0.self_attn.q_proj.weight", rank=4,
                dims=(48, 32), members_per_half=100, overlap=0.5, null_mean=0.1, null_q95=0.2,
                chance=4 / 48, p_value=0.004, permutations=200, min_effect=0.4,
                low_rank_share=0.8, full_rank_share=0.3, p_low_rank=0.01, p_adjusted=0.008,
                p_low_rank_adjusted=0.02, correction="bh", alpha=0.05, family_size=2)
    return OverlapRow(**{**base, **kw})


def test_the_figure_shows_each_rows_numbers_and_verdicts(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from PIL import Image
    nan = float("nan")
    rows = [_row(),  # reproducible, low rank tested
            _row(name="model.layers.1.mlp.up_proj.weight", overlap=0.02, null_mean=0.03,
                 null_q95=0.05, p_value=0.4, min_effect=1.3, p_adjusted=nan, p_low_rank=nan,
                 p_low_rank_adjusted=nan, chance=4 / 64),  # powerless: unadjusted p only
            _row(space="example", name="examples", rank=1, dims=(3, 9), overlap=nan,
                 null_mean=nan, null_q95=nan, p_value=nan, min_effect=0.25, p_adjusted=nan,
                 p_low_rank=nan, p_low_rank_adjusted=nan, low_rank_share=nan, chance=1 / 3)]
    drawn = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: (drawn.append(fig), close(fig)))
    path = str(tmp_path / "a.png")
    assert figure(rows, path) == path
    fig, = drawn
    width = max(7, 0.6 * 3 + 3)
    assert tuple(fig.get_size_inches()) == pytest.approx((width, 6.5))
    assert Image.open(path).size == (round(width * 120), round(6.5 * 120))  # dpi 120
    top, bottom = fig.axes[:2]
    x = np.arange(3)
    observed, null = [c for c in top.containers if type(c).__name__ == "BarContainer"][:2]
    np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in observed], x - 0.2)
    np.testing.assert_allclose([b.get_height() for b in observed], [0.5, 0.02, nan])
    np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in null], x + 0.2)
    np.testing.assert_allclose([b.get_height() for b in null], [0.1, 0.03, nan])
    assert [b.get_width() for b in observed] == pytest.approx([0.4] * 3)
    assert [b.get_width() for b in null] == pytest.approx([0.4] * 3)
    # the null's bar reaches from its mean to its 95th percentile
    segments = null.errorbar.lines[2][0].get_segments()
    np.testing.assert_allclose([s[:, 1] for s in segments[:2]], [[0.1, 0.2], [0.03, 0.05]])
    chance = next(c for c in top.collections if len(c.get_offsets()) == 3)
    np.testing.assert_allclose(chance.get_offsets(), np.c_[x, [r.chance for r in rows]])
    notes = {t.get_text(): t.xy for t in top.texts}
    # each note sits centred above its bars (never across them)
    assert {(t.get_ha(), t.get_va()) for t in top.texts} == {("center", "bottom")}
    assert notes == {"p adj 0.008 *": (0, pytest.approx(0.5 * 1.15)),
                     "p 0.400\n(powerless)": (1, pytest.approx(0.05 * 1.15))}
    assert top.get_yscale() == "log" and top.get_ylabel() == "top-r subspace overlap"
    assert top.get_title() == ("Split-half reproducibility (permutation p, BH-adjusted) and "
                               "low-rank share")
    assert [t.get_text() for t in top.get_legend().get_texts()] == [
        "chance r/dim", "observed halves", "null mean (bar: 95th pct)"]
    shares, reference = bottom.containers[:2]
    np.testing.assert_allclose([b.get_height() for b in shares], [0.8, 0, 0])
    np.testing.assert_allclose([b.get_height() for b in reference], [0.3, 0, 0])
    np.testing.assert_allclose([b.get_x() + b.get_width() / 2 for b in reference], x + 0.2)
    assert [b.get_width() for b in shares + reference] == pytest.approx([0.4] * 6)
    assert [(t.get_text(), t.xy) for t in bottom.texts] == [
        ("not tested:\nnot reproducible", (1, 0.5)), ("not tested:\nnot reproducible", (2, 0.5))]
    assert bottom.get_ylim() == (0, 1.1)
    assert bottom.get_ylabel() == "share of shared energy in rank r"
    assert [t.get_text() for t in bottom.get_legend().get_texts()] == [
        "low-rank share g_r", "full-rank signal, same strength"]
    assert list(bottom.get_xticks()) == [0, 1, 2]
    assert [t.get_text() for t in bottom.get_xticklabels()] == [
        "L0.self_attn.q_proj\nmin effect ρ 0.4", "L1.mlp.up_proj\nmin effect ρ 1.3",
        "examples\nmin effect λ² 0.25"]
    assert top.get_shared_x_axes().joined(top, bottom)
    # Holm is named as such; an empty figure draws without rows
    figure([_row(correction="holm")], path)
    assert drawn[-1].axes[0].get_title().startswith(
        "Split-half reproducibility (permutation p, Holm-adjusted)")
    assert tuple(drawn[-1].get_size_inches()) == pytest.approx((7, 6.5))
    figure([_row()] * 10, path)  # wider with more rows: 0.6 inch each plus 3
    assert tuple(drawn[-1].get_size_inches()) == pytest.approx((9, 6.5))


# -- split_half: the family, the layers and the arguments it hands each row ------------------------

def _two_layer_perturber():
    from corp.method.perturb import PerturbationSpec, Perturber
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    # a 1-D parameter among the perturbed ones: split-half tests 2-D layers only
    return Perturber(model, PerturbationSpec(parameters=("0.weight", "0.bias", "1.weight")))


def _records(n=8, examples=6, seed=0):
    from corp.method.population import Record
    rng = np.random.default_rng(seed)
    seeds = member_seeds(n, seed)
    out = []
    for i, s in enumerate(seeds):
        r = (rng.random(examples) < 0.3 + 0.05 * i).astype(float)
        out.append(Record(s, 0.01 * (1 + i % 2), float(r.mean()), float(r.mean()), list(r),
                          list(r >= 1)))
    return out


def _expected_rows(records, base, rank, permutations, seed, alpha, correction):
    from corp.method.analysis import _halves, correct
    halves = _halves(len(records), seed)
    seeds = [r.seed for r in records]
    sigmas = np.array([r.sigma for r in records])
    rewards = np.array([r.reward for r in records])
    rows = [weight_space_row(name, shape, seeds, sigmas, rewards, halves, rank, permutations,
                             seed) for name, shape in (("0.weight", (4, 4)), ("1.weight", (2, 4)))]
    change = np.array([r.rewards for r in records]) - np.asarray(base)[None, :]
    rows.append(example_space_row(change, halves, rank, permutations, seed))
    return correct(rows, alpha, correction, seed)


def _same_rows(got, expected):
    assert [(r.space, r.name, r.rank, r.permutations, r.family_size) for r in got] == \
        [(r.space, r.name, r.rank, r.permutations, r.family_size) for r in expected]
    for g, e in zip(got, expected):
        np.testing.assert_array_equal([g.overlap, g.p_value, g.p_adjusted, g.null_mean],
                                      [e.overlap, e.p_value, e.p_adjusted, e.null_mean])


def test_split_half_tests_each_2d_layer_and_the_reward_changes_as_one_family(caplog):
    from corp.method.analysis import split_half, weight_min_effect
    pert = _two_layer_perturber()
    records = _records()
    base = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0])
    # 8 members, 4 per half: the 4 x 4 layer's min effect is exactly 1 (no effect of any size is
    # detectable), the 2 x 4 layer's is below 1: the family is that layer and the example space
    assert weight_min_effect((4, 4), 4) == 1.0 and weight_min_effect((2, 4), 4) < 1
    with caplog.at_level("INFO", logger="corp"):
        rows = split_half(pert, records, base, rank=2, permutations=200, seed=3, alpha=0.005,
                          correction="bh")
    n_perm = math.ceil(2 / 0.005) - 1  # 399: 1 / (1 + P) <= alpha / family
    assert f"split-half: {n_perm} permutations (not 200) so that a bh correction over 2 rows " \
           f"can reject at alpha 0.005" in caplog.text
    _same_rows(rows, _expected_rows(records, base, 2, n_perm, 3, 0.005, "bh"))
    assert rows[0].family_size == 2 and rows[-1].dims[1] == 6
    # the defaults: rank 4, 200 permutations, seed 0, Holm at alpha 0.05
    _same_rows(split_half(pert, records, base),
               _expected_rows(records, base, 4, 200, 0, 0.05, "holm"))
    # rank 4 by default: a 6 x 6 layer gets 4 directions (fewer only where a side is shorter)
    from corp.method.perturb import PerturbationSpec, Perturber
    square = Perturber(torch.nn.Sequential(torch.nn.Linear(6, 6)),
                       PerturbationSpec(parameters=("0.weight",)))
    assert split_half(square, records, base)[0].rank == 4
    # `layers` picks by name
    assert [r.name for r in split_half(pert, records, base, layers=["1.weight"])] == [
        "1.weight", "examples"]


def test_split_half_refuses_too_few_members_or_permutations():
    from corp.method.analysis import split_half
    pert = _two_layer_perturber()
    with pytest.raises(ValueError, match=r"^split-half analysis needs at least 4 members, got 3$"):
        split_half(pert, _records(3), np.zeros(6))
    with pytest.raises(ValueError, match=r"^permutations must be >= 200 \(p >= 1/\(1\+P\)\), "
                                         r"got 199$"):
        split_half(pert, _records(), np.zeros(6), permutations=199)


def test_permutations_for_and_subspace_overlap_known_answers():
    from corp.method.analysis import subspace_overlap
    assert permutations_for(3, 0.05, 500) == 500  # more were asked for: more are run
    assert permutations_for(3, 0.05, 10) == 200
    assert permutations_for(30, 0.05, 10) == 599
    e = np.eye(4)
    assert subspace_overlap(e[:, :2], e[:, [0, 2]]) == pytest.approx(0.5)
    assert subspace_overlap(e[:, :2], e[:, [1, 0]]) == pytest.approx(1.0)
    assert subspace_overlap(e[:, :1], e[:, 1:3]) == pytest.approx(0.0)
    assert subspace_overlap(e[:, :2], e[:, :1]) == pytest.approx(1.0)  # r: the smaller rank


def test_the_table_row_by_row_and_its_legend():
    nan = float("nan")
    rows = [_row(),
            _row(name="model.layers.1.mlp.up_proj.weight", overlap=0.02, null_mean=0.03,
                 null_q95=0.05, p_value=0.4, min_effect=1.3, p_adjusted=nan, p_low_rank=nan,
                 p_low_rank_adjusted=nan, full_rank_share=nan),
            _row(name="model.layers.2.mlp.down_proj.weight", p_low_rank_adjusted=0.3,
                 p_value=0.0004, p_adjusted=0.0008),
            _row(space="example", name="examples", rank=1, dims=(3, 9), overlap=nan,
                 null_mean=nan, null_q95=nan, p_value=nan, min_effect=0.25, p_adjusted=nan,
                 p_low_rank=nan, p_low_rank_adjusted=nan, low_rank_share=nan,
                 full_rank_share=nan)]
    md = table(rows).split("\n")
    assert md[0] == ("| space | layer | r | overlap | null mean (95th pct) | p | p adj (BH) | "
                     "reproducible | low-rank share (full-rank ref.) | p low-rank adj | low rank | "
                     "min effect | verdict |")
    assert md[2:6] == [
        "| weight | model.layers.0.self_attn.q_proj.weight | 4 | 0.500 | 0.100 (0.200) | 0.004 | "
        "0.008 | yes | 0.800 (0.300) | 0.020 | yes | ρ ≥ 0.40 | reproducible, low rank |",
        "| weight | model.layers.1.mlp.up_proj.weight | 4 | 0.020 | 0.030 (0.050) | 0.400 | — | "
        "no | 0.800 (—) | — | — | ρ ≥ 1.30 | no (could not have shown it at this N) |",
        "| weight | model.layers.2.mlp.down_proj.weight | 4 | 0.500 | 0.100 (0.200) | 4.0e-04 | "
        "8.0e-04 | yes | 0.800 (0.300) | 0.300 | no | ρ ≥ 0.40 | reproducible, not low rank |",
        "| example | examples (3 of 9 vary) | 1 | — | — (—) | — | — | no | — (—) | — | — | "
        "λ² ≥ 0.250 | untestable |"]
    assert md[6] == ""
    assert md[7] == (
        "p: permutation p-value, 200 permutations (weight space: rewards permuted across "
        "members; example space: each example's column permuted across members). p adj: BH over "
        "the 2 rows of one analysis that could show an effect (per task in an experiment; rows "
        "with ρ ≥ 1 are left out: —); reproducible = p adj <= 0.05. r: the analysis rank, at "
        "most a quarter of the varying examples in the example space. Low-rank share: the part "
        "of the halves' shared signal energy carried by their rank-r approximations (a ratio of "
        "two estimates: where nothing is reproducible it is noise and may fall outside [0, 1]); "
        "full-rank ref.: its median for an isotropic Gaussian signal of the same strength and "
        "noise; tested only where reproducible (p adj over those rows). Min effect (power): "
        "smallest planted effect the split halves can detect at this N and shape; weight space: "
        "correlation ρ between reward and a member's noise along each of r planted directions, "
        "(m n)^(1/4)/sqrt(members per half), ρ ≥ 1 means no effect of any size; example space: "
        "share λ² of each varying example's reward-change variance explained by a planted "
        "common factor.")
    assert len(md) == 8
    assert table(rows, legend=False).split("\n") == md[:6]
    holm = table([_row(correction="holm")], legend=False)
    assert holm.startswith("| space | layer | r | overlap | null mean (95th pct) | p | "
                           "p adj (Holm) |")
    assert table([], legend=True).split("\n")[0].endswith("| p adj (Holm) | reproducible | "
                                                          "low-rank share (full-rank ref.) | p "
                                                          "low-rank adj | low rank | min effect "
                                                          "| verdict |")
    assert len(table([]).split("\n")) == 2


def test_a_rows_json_carries_its_verdicts():
    data = _row().to_json()
    assert {k: data[k] for k in ("reproducible", "low_rank", "structured", "powered",
                                 "verdict")} == {"reproducible": True, "low_rank": True,
                                                 "structured": True, "powered": True,
                                                 "verdict": "reproducible, low rank"}
    data = _row(min_effect=1.5, p_adjusted=0.5, p_low_rank_adjusted=float("nan")).to_json()
    assert (data["reproducible"], data["low_rank"], data["structured"], data["powered"]) == (
        False, False, False, False)
    assert data["verdict"] == "no (could not have shown it at this N)"
    assert data["p_value"] == 0.004 and "_reference" not in data


def test_p_value_format_and_an_integer_reward_change():
    from corp.method.analysis import _fmt, _fmt_p
    assert (_fmt_p(0.001), _fmt_p(0.00099), _fmt_p(0.5), _fmt_p(float("nan"))) == (
        "0.001", "9.9e-04", "0.500", "—")
    assert (_fmt(0.12345), _fmt(0.12345, 1), _fmt(float("nan")), _fmt(None)) == (
        "0.123", "0.1", "—", "—")
    # rewards of 0/1 tasks come as integers: the same row as their float values
    rng = np.random.default_rng(0)
    change = (rng.random((20, 6)) < 0.5).astype(int) - (rng.random(6) < 0.5).astype(int)
    halves = _halves(20, 0)
    a = example_space_row(change, halves, 1, 200)
    b = example_space_row(change.astype(float), halves, 1, 200)
    assert (a.overlap, a.p_value, a.null_mean) == (b.overlap, b.p_value, b.null_mean)


# -- the rows' statistics against their definitions ----------------------------------------------

def _capture_overlaps(monkeypatch):
    import corp.method.analysis as analysis
    seen = []
    original = analysis._overlaps

    def spy(a, b):
        out = original(a, b)
        seen.append(out.numpy().copy())
        return out
    monkeypatch.setattr(analysis, "_overlaps", spy)
    return seen


def test_a_rows_numbers_are_its_observation_and_null(monkeypatch):
    seen = _capture_overlaps(monkeypatch)
    rng = np.random.default_rng(1)
    n = 24
    change = (rng.random((n, 10)) < 0.4).astype(float)
    row = example_space_row(change, _halves(n, 0), 1, 200, seed=5)
    (values,) = seen
    assert len(values) == 201  # the observation, then the null
    assert row.overlap == float(values[0])
    assert row.null_mean == pytest.approx(float(values[1:].mean()), abs=0, rel=1e-12)
    assert row.null_q95 == pytest.approx(float(np.quantile(values[1:], 0.95)), rel=1e-12)
    assert row.p_value == permutation_p(values[0], values[1:])
    seen.clear()
    seeds = member_seeds(n, 0)
    row = weight_space_row("w", (6, 5), seeds, np.full(n, SIGMA), rng.standard_normal(n),
                           _halves(n, 0), 2, 200)
    values = np.concatenate(seen)
    assert len(values) == 201 and row.overlap == float(values[0])
    assert row.null_mean == pytest.approx(float(values[1:].mean()), rel=1e-12)
    assert row.null_q95 == pytest.approx(float(np.quantile(values[1:], 0.95)), rel=1e-12)
    assert row.p_value == permutation_p(values[0], values[1:])


def test_the_example_null_permutes_each_examples_column_across_members(monkeypatch):
    taken = []
    original = np.take_along_axis
    monkeypatch.setattr(np, "take_along_axis",
                        lambda a, i, axis: taken.append(original(a, i, axis)) or taken[-1])
    rng = np.random.default_rng(2)
    change = rng.standard_normal((30, 5))
    example_space_row(change, _halves(30, 0), 1, 200, seed=1)
    (null,) = taken
    assert null.shape == (200, 30, 5)
    observed = np.sort(change, axis=0)
    for k in (0, 57, 199):  # every permutation keeps each column's values, in another order
        np.testing.assert_array_equal(np.sort(null[k], axis=0), observed)
    assert not np.array_equal(null[0], change)


def test_rows_are_reproducible_and_their_defaults_are_seed_0():
    rng = np.random.default_rng(3)
    n = 20
    change = rng.standard_normal((n, 6))
    a = example_space_row(change, _halves(n, 0), 1, 200, seed=4)
    b = example_space_row(change, _halves(n, 0), 1, 200, seed=4)
    assert (a.overlap, a.null_mean, a.p_value) == (b.overlap, b.null_mean, b.p_value)
    seeds = member_seeds(n, 0)
    rewards = rng.standard_normal(n)
    args = ("w", (6, 5), seeds, np.full(n, SIGMA), rewards, _halves(n, 0), 2, 200)
    default, zero, one = (weight_space_row(*args, **kw) for kw in ({}, {"seed": 0},
                                                                     {"seed": 1}))
    assert (default.null_mean, default.p_value) == (zero.null_mean, zero.p_value)
    assert default.null_mean != one.null_mean
    # 0/1 rewards as booleans: the same row as their float values
    hits = rewards > 0
    a = weight_space_row("w", (6, 5), seeds, np.full(n, SIGMA), hits, _halves(n, 0), 2, 200)
    b = weight_space_row("w", (6, 5), seeds, np.full(n, SIGMA), hits.astype(float),
                         _halves(n, 0), 2, 200)
    assert (a.overlap, a.null_mean, a.p_value) == (b.overlap, b.null_mean, b.p_value)


def test_the_example_rows_rank_size_and_testability():
    rng = np.random.default_rng(4)
    change = rng.standard_normal((8, 40))  # 4 members per half, 40 varying examples
    row = example_space_row(change, _halves(8, 0), 10, 200)
    # r <= a quarter of the varying examples (10) and < members per half (4)
    assert (row.rank, row.members_per_half, row.name, row.space) == (3, 4, "examples", "example")
    assert row.dims == (40, 40) and row.chance == pytest.approx(3 / 40)
    assert row.min_effect == pytest.approx(math.sqrt(10) / (40 + math.sqrt(10)))
    small = example_space_row(rng.standard_normal((4, 8)), _halves(4, 0), 1, 200)
    assert small.members_per_half == 2 and small.testable  # two members per half suffice
    for untestable in (example_space_row(np.c_[rng.standard_normal(6), np.ones(6)],
                                         _halves(6, 0), 1, 200),  # one varying example
                       example_space_row(rng.standard_normal((3, 5)), _halves(3, 0), 1, 200)):
        assert not untestable.testable
        assert all(math.isnan(v) for v in (untestable.overlap, untestable.null_mean,
                                           untestable.null_q95, untestable.low_rank_share))


def test_the_example_rows_noise_level_per_off_diagonal_entry():
    """The full-rank reference's noise for the example space, from its definition: each half's
    off-diagonal correlation matrix A_h; noise variance per entry of A_h = (|A_h|^2 -
    <A_1, A_2>) / p^2, over the p (p - 1) off-diagonal entries instead: times p / (p - 1)."""
    rng = np.random.default_rng(5)
    n, p = 40, 6
    change = rng.standard_normal((n, p)) + 0.3 * rng.standard_normal((n, 1))
    halves = _halves(n, 0)
    row = example_space_row(change, halves, 1, 200)

    def offdiag_corr(h):
        x = change[h] - change[h].mean(axis=0)
        x = x / np.sqrt((x ** 2).mean(axis=0))
        c = x.T @ x / (len(h) - 1)
        return c - np.diag(np.diag(c))

    a1, a2 = offdiag_corr(halves[0]), offdiag_corr(halves[1])
    shared = float((a1 * a2).sum())
    _, symmetric, energy, v1, v2 = row._reference
    assert symmetric and energy == pytest.approx(shared, rel=1e-9)
    expected = [max(0.0, ((a ** 2).sum() - shared) / p ** 2) * p / (p - 1) for a in (a1, a2)]
    assert min(expected) > 0  # a case the clamp at 0 does not decide
    assert (v1, v2) == pytest.approx(expected, rel=1e-9)


def test_the_full_rank_reference_draws_what_it_says_in_bounded_chunks(monkeypatch):
    import corp.method.analysis as analysis
    from corp.method.analysis import _full_rank_reference
    batches = []
    original = analysis._low_rank_shares

    def spy(a1, a2, r):
        batches.append((a1.clone(), a2.clone()))
        return original(a1, a2, r)
    monkeypatch.setattr(analysis, "_low_rank_shares", spy)
    m = n = 6
    # memory for 3 draws at a time (6 float32 matrices of m x n each): 7 draws in 3 + 3 + 1
    out = _full_rank_reference((m, n), True, 2.0, 1.0, 0.0, 2, 7, seed=9,
                               memory_bytes=3 * 6 * 4 * m * n)
    assert [len(a1) for a1, _ in batches] == [3, 3, 1] and out.shape == (7,)
    for a1, a2 in batches:
        signal = a2  # noise2 = 0: the second half is the signal itself
        assert torch.allclose(signal, signal.transpose(-1, -2))  # symmetric ...
        assert torch.all(signal.diagonal(dim1=-2, dim2=-1) == 0)  # ... with a zero diagonal
        np.testing.assert_allclose(signal.square().sum((-1, -2)), 2.0, rtol=1e-5)  # energy
    noise = torch.cat([a1 - a2 for a1, a2 in batches])  # noise1 = 1 per off-diagonal entry
    off = noise[:, ~torch.eye(m, dtype=torch.bool)]
    assert torch.allclose(noise, noise.transpose(-1, -2), atol=1e-6)
    assert 0.75 < float(off.var()) < 1.3  # 7 x 30 entries: +-~0.2 at 2 sd
    # the same seed, the same draws; all in one chunk when memory allows
    again = _full_rank_reference((m, n), True, 2.0, 1.0, 0.0, 2, 7, seed=9,
                                 memory_bytes=3 * 6 * 4 * m * n)
    np.testing.assert_array_equal(out, again)
    batches.clear()
    _full_rank_reference((m, n), False, 2.0, 1.0, 0.5, 2, 7, seed=9)
    assert [len(a1) for a1, _ in batches] == [7]
    assert not torch.allclose(batches[0][1], batches[0][1].transpose(-1, -2))


def test_overlap_uses_the_smaller_rank_whichever_side_it_is_on():
    from corp.method.analysis import subspace_overlap
    e = np.eye(4)
    assert subspace_overlap(e[:, :1], e[:, :2]) == pytest.approx(1.0)
    assert subspace_overlap(e[:, :2], e[:, [0, 3]]) == pytest.approx(0.5)


def test_the_randomized_subspace_is_deterministic_in_any_float_dtype():
    g = torch.Generator().manual_seed(1)
    m, n, r = 150, 140, 2
    a = 4 * torch.randn(1, m, r, generator=g) @ torch.randn(1, r, n, generator=g) \
        + torch.randn(1, m, n, generator=g)
    first = _top_left_subspace(a, r)
    torch.randn(5)  # the global generator moves: the sketch has its own
    assert torch.equal(first, _top_left_subspace(a, r))
    as64 = _top_left_subspace(a.double(), r)
    assert as64.shape == (1, m, r)
    assert float(torch.linalg.matrix_norm(first.transpose(-1, -2) @ as64).square() / r) > 0.99


def test_weighted_sums_stream_within_the_memory_budget(monkeypatch):
    calls = []
    original = ck.gaussian_noise
    monkeypatch.setattr(ck, "gaussian_noise", lambda shape, key: calls.append(key) or
                        original(shape, key))
    shape, numel = (6, 5), 30
    keys = list(range(101, 111))  # 10 members
    coeffs = np.random.default_rng(0).standard_normal((7, 10))
    exact = coeffs @ np.stack([original((numel,), k).numpy() for k in keys])
    per = 4 * numel

    def run(memory):
        calls.clear()
        parts = list(_weighted_sums(shape, keys, coeffs, memory))
        got = torch.cat([p.reshape(len(p), -1) for p in parts]).numpy()
        np.testing.assert_allclose(got, exact, rtol=1e-5, atol=1e-6)
        return [len(p) for p in parts], list(calls)

    # the noise fits half the budget: generated once, every chunk of rows one product
    sizes, generated = run(40 * per)
    assert sizes == [7] and generated == keys
    sizes, generated = run(20 * per)  # 10 members fit in half; 5 rows per chunk
    assert sizes == [5, 2] and generated == keys
    # it does not fit: regenerated in blocks of (budget / 2) members for each chunk of rows
    sizes, generated = run(8 * per)  # blocks of 4 members, chunks of 2 rows
    assert sizes == [2, 2, 2, 1] and generated == keys * 4
    sizes, generated = run(3 * per)  # the smallest: blocks of 1, one row at a time
    assert sizes == [1] * 7 and generated == keys * 7


def test_correct_tests_low_rank_on_the_reproducible_rows_with_their_own_seeds():
    from corp.method.analysis import _full_rank_reference, correct
    ref = ((6, 5), False, 0.5, 0.01, 0.02)
    nan = float("nan")
    untested = dict(p_low_rank=nan, full_rank_share=nan, min_effect=0.3, permutations=200)
    # rank 1 and a share near 1: low-rank p-values small enough for Holm and BH to differ
    rows = [_row(p_value=0.001, _reference=ref, low_rank_share=0.99, rank=1, **untested),
            _row(p_value=0.002, _reference=ref, low_rank_share=0.98, rank=1, **untested),
            _row(p_value=0.003, _reference=((6, 5), False, 0.0, 0.01, 0.02), **untested),
            _row(p_value=0.5, _reference=ref, **untested)]
    out = correct(rows, 0.05, "bh", seed=3, memory_bytes=1 << 20)
    assert [r.reproducible for r in out] == [True, True, True, False]
    for i in (0, 1):  # each row's reference has its own seed, seed * 7919 + row index
        reference = _full_rank_reference((6, 5), False, 0.5, 0.01, 0.02, 1, 200, 3 * 7919 + i)
        assert out[i].p_low_rank == permutation_p(out[i].low_rank_share, reference)
        assert out[i].full_rank_share == float(np.median(reference))
    assert out[2].p_low_rank == 1.0  # no shared energy: nothing to concentrate
    assert math.isnan(out[3].p_low_rank)  # not reproducible: not tested
    # the low-rank p-values are adjusted with the same correction (BH here)
    lows = [r.p_low_rank for r in out[:3]]
    assert not np.array_equal(adjust(lows, "bh"), adjust(lows, "holm"))
    np.testing.assert_array_equal([r.p_low_rank_adjusted for r in out[:3]], adjust(lows, "bh"))
    for alpha in (0, 1, 1.5):
        with pytest.raises(ValueError, match=rf"^alpha must be in \(0, 1\), got {alpha}$"):
            correct([_row()], alpha)


def test_adjust_defaults_to_holm_and_keeps_nan_out():
    p = [0.01, float("nan"), 0.04]
    np.testing.assert_array_equal(adjust(p), adjust(p, "holm"))
    np.testing.assert_allclose(adjust(p), [0.02, np.nan, 0.04])
    assert np.isnan(adjust([float("nan")] * 2)).all()


def test_ties_count_within_a_tolerance_relative_to_the_observation():
    # |observed| <= 1: an absolute 1e-9; above 1, 1e-9 of the observation
    assert permutation_p(0.5, np.array([0.5 - 0.9e-9])) == 1.0
    assert permutation_p(0.5, np.array([0.5 - 1.5e-9])) == 0.5
    assert permutation_p(10.0, np.array([10.0 - 5e-9])) == 1.0
    assert permutation_p(10.0, np.array([10.0 - 2e-8])) == 0.5


def test_weight_rows_definition_and_an_untestable_one():
    """Delta_h = sum_i c_i eps_i with c_i = sigma_i (r_i - mean_h r) / n_h, from the module doc:
    the row's shared energy is <Delta_1, Delta_2> of exactly that."""
    from corp.method.perturb import parameter_key
    n, shape = 12, (6, 5)
    seeds = member_seeds(n, 1)
    rng = np.random.default_rng(6)
    rewards, sigmas = rng.standard_normal(n), rng.choice([0.01, 0.02], n)
    halves = _halves(n, 0)
    row = weight_space_row("w", shape, seeds, sigmas, rewards, halves, 2, 200)

    def delta(h):
        h = np.asarray(h)
        c = sigmas[h] * (rewards[h] - rewards[h].mean()) / len(h)
        return sum(float(ci) * ck.gaussian_noise(shape, parameter_key(seeds[i], "w")).double()
                   for ci, i in zip(c, h))

    d1, d2 = delta(halves[0]), delta(halves[1])
    shared = float((d1 * d2).sum())
    assert row._reference[2] == pytest.approx(shared, rel=1e-4)
    # each half's noise variance per entry: (|Delta_h|^2 - <Delta_1, Delta_2>) / (m n)
    assert row._reference[3] == pytest.approx(float((d1 * d1).sum() - shared) / 30, rel=1e-4)
    assert row._reference[4] == pytest.approx(float((d2 * d2).sum() - shared) / 30, rel=1e-4)
    assert (row.members_per_half, row.chance, row.rank) == (6, pytest.approx(2 / 6), 2)
    assert row.dims == (6, 5) and row.space == "weight" and row.name == "w"
    flat = weight_space_row("w", shape, seeds, sigmas, np.ones(n), halves, 2, 200)
    assert not flat.testable and math.isnan(flat.low_rank_share) and math.isnan(flat.p_value)
    assert (flat.members_per_half, flat.chance) == (6, pytest.approx(2 / 6))


def test_an_odd_population_leaves_one_member_out_of_the_halves():
    from corp.method.analysis import split_half
    pert = _two_layer_perturber()
    records = _records(9)
    base = np.zeros(6)
    rows = split_half(pert, records, base, rank=2, permutations=200, alpha=0.005)
    # halves of 4: the 4 x 4 layer's min effect is exactly 1 again, out of the family
    assert [r.members_per_half for r in rows] == [4, 4, 4]
    assert rows[0].min_effect == 1.0 and rows[0].family_size == 2
    assert rows[0].permutations == math.ceil(2 / 0.005) - 1


def test_the_exact_subspace_is_the_top_left_singular_subspace_on_either_side():
    g = torch.Generator().manual_seed(7)
    for m, n in ((5, 8), (8, 5)):
        a = torch.randn(2, m, n, generator=g, dtype=torch.float64)
        got = _top_left_subspace(a, 2)
        exact = torch.linalg.svd(a, full_matrices=False)[0][..., :2]
        assert got.shape == (2, m, 2)
        # the same subspace: equal projections
        torch.testing.assert_close(got @ got.transpose(-1, -2),
                                   exact @ exact.transpose(-1, -2), rtol=0, atol=1e-9)


def test_a_row_comes_back_from_its_json_with_the_same_verdicts():
    from corp.method.analysis import OverlapRow
    nan = float("nan")
    for row in (_row(), _row(min_effect=1.5, p_adjusted=nan, p_low_rank_adjusted=nan),
                _row(space="example", name="examples", dims=(3, 9), p_value=nan)):
        data = json.loads(json.dumps(row.to_json()))  # through a file, as an experiment step
        back = OverlapRow.from_json(data)
        assert json.dumps(back.to_json(), sort_keys=True) == json.dumps(row.to_json(),
                                                                         sort_keys=True)
        assert back.dims == row.dims and isinstance(back.dims, tuple)
        assert (back.verdict, back.reproducible, back.low_rank) == (row.verdict,
                                                                    row.reproducible,
                                                                    row.low_rank)
    assert table([OverlapRow.from_json(_row().to_json())]) == table([_row()])
