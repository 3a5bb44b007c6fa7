"""The timing helpers behind the benchmark tables: interleaving and the paired ratio interval."""

import pytest

from benchmarks._measure import (interleaved_medians, interleaved_times, paired_ratio,
                                 paired_ratio_interval)
from benchmarks.run import Row, to_markdown


def test_interleaved_times_runs_every_fn_each_round_in_a_varying_order():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in "abcd"}
    times = interleaved_times(fns, repeats=12, warmup=2)
    assert {k: len(v) for k, v in times.items()} == {k: 12 for k in "abcd"}
    warm, rounds = calls[:8], calls[8:]
    assert warm == ["a", "a", "b", "b", "c", "c", "d", "d"]
    orders = [tuple(rounds[i:i + 4]) for i in range(0, 48, 4)]
    assert all(sorted(o) == list("abcd") for o in orders)  # each fn once per round
    # A fixed order would let the state one call leaves (caches, the heap) always hit the same
    # neighbour; shuffled per round, a fixed position for every fn is very unlikely.
    assert len(set(orders)) > 1
    assert {o[0] for o in orders} != {orders[0][0]}


def test_interleaved_medians_are_medians_of_the_times(monkeypatch):
    ticks = iter(range(1000))
    monkeypatch.setattr("benchmarks._measure.time.perf_counter", lambda: next(ticks))
    medians = interleaved_medians({"a": lambda: None}, repeats=3, warmup=0)
    assert medians == {"a": 1}  # every call spans one tick


def test_paired_ratio_interval_of_a_constant_ratio_is_that_ratio():
    assert paired_ratio_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0]) == (2.0, 2.0)


def test_paired_ratio_interval_orders_numerator_over_denominator():
    lo, hi = paired_ratio_interval([3.0] * 9 + [2.9], [1.0] * 10)
    assert 2.8 < lo <= hi <= 3.0  # baseline / ours, not its inverse


def test_paired_ratio_interval_holds_one_for_a_tie_and_excludes_it_for_a_gain():
    # Per-round ratios scattered evenly around 1: no difference shown.
    tie = [0.9, 1.1, 0.95, 1.05, 1.0, 0.92, 1.08, 0.97, 1.03, 1.0, 0.94, 1.06, 0.99, 1.01, 0.96]
    lo, hi = paired_ratio_interval(tie, [1.0] * len(tie))
    assert lo < 1.0 < hi
    # The same scatter around 1.2: shown faster.
    gain = [r + 0.2 for r in tie]
    lo, hi = paired_ratio_interval(gain, [1.0] * len(gain))
    assert 1.0 < lo < 1.2 < hi


def test_paired_ratio_interval_pairs_by_round_not_by_sorted_value():
    # Both slow down together in round 3 (machine noise): paired, the ratio stays 1.5 throughout.
    ours = [1.0, 1.0, 4.0, 1.0, 1.0]
    baseline = [1.5, 1.5, 6.0, 1.5, 1.5]
    assert paired_ratio_interval(baseline, ours) == (1.5, 1.5)


def test_paired_ratio_interval_keeps_each_rounds_pair_together():
    # Per-round ratios 3, 0.5 and 2. Pairing the sorted times instead (1.5, 1.5, 1.33) would
    # hide the scatter of the real pairs.
    assert paired_ratio_interval([3.0, 1.5, 4.0], [1.0, 3.0, 2.0]) == (0.5, 3.0)


def test_paired_ratio_interval_narrows_with_the_level_on_both_sides():
    ratios = [0.9, 1.1, 0.95, 1.05, 1.0, 0.92, 1.08, 0.97, 1.03, 1.0, 0.94, 1.06, 0.99, 1.01, 0.96]
    lo95, hi95 = paired_ratio_interval(ratios, [1.0] * len(ratios), level=0.95)
    lo50, hi50 = paired_ratio_interval(ratios, [1.0] * len(ratios), level=0.5)
    assert lo95 < lo50 <= hi50 < hi95


@pytest.mark.parametrize("num, den, level, match", [
    ([1.0], [1.0, 2.0], 0.95, "equal length"), ([], [], 0.95, "non-empty"),
    ([1.0], [1.0], 1.0, "level")])
def test_paired_ratio_interval_names_bad_arguments(num, den, level, match):
    with pytest.raises(ValueError, match=match):
        paired_ratio_interval(num, den, level=level)


def test_paired_ratio_is_the_median_of_per_round_ratios():
    assert paired_ratio([3.0, 1.5, 4.0], [1.0, 3.0, 2.0]) == 2.0  # ratios 3, 0.5, 2
    with pytest.raises(ValueError):
        paired_ratio([1.0], [1.0, 2.0])


def test_markdown_shows_the_paired_ratio_and_interval_and_not_in_the_notes():
    rows = [Row("perturbed_linear", "T=1", 0.001, 0.002, 2.0,
                {"ratio_paired": 2.1, "ratio_lo": 1.5, "ratio_hi": 2.5, "chunked_ratio": 1.9}),
            Row("noise_generation", "n=8", 0.001, 0.003, 3.0, {})]
    table = to_markdown(rows).splitlines()
    assert "| 2.10 [1.50, 2.50] | chunked_ratio=1.9 |" in table[2]
    assert table[3].endswith("| 3.00 |  |")


def test_linear_rule_benchmark_writes_its_table(tmp_path):
    from benchmarks import bench_linear_rule as bench
    out = tmp_path / "rule.md"
    assert bench.main(["--quick", "--device", "cpu", "--output", str(out)]) == 0
    lines = [ln for ln in out.read_text().splitlines() if ln.startswith("| 576x576 |")]
    assert [ln.split("|")[2].strip() for ln in lines] == ["1", "4"]
    from corp_kernels import dispatch
    if dispatch.backends()["cpp"].available:  # a W of one chunk: the C++ rule picks chunked
        assert all(ln.split("|")[3].strip() == "chunked" for ln in lines)
    assert "of 4." in out.read_text()  # the count of rows where the pick is shown slower


def test_linear_rule_benchmark_refuses_a_backend_without_strategies(tmp_path, monkeypatch,
                                                                    capsys):
    """Where perturbed_linear falls back to the torch reference (no C++ build), forcing a strategy
    changes nothing: the table would time one path three times and call it a rule."""
    from benchmarks import bench_linear_rule as bench
    from corp_kernels import dispatch
    monkeypatch.setattr(dispatch, "resolve", lambda backend, device, op: "torch")
    out = tmp_path / "rule.md"
    assert bench.main(["--quick", "--device", "cpu", "--output", str(out)]) == 2
    assert not out.exists() and "'torch' backend" in capsys.readouterr().err
