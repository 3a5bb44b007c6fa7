"""benchmarks/corp_summary.py: the right rows, the paired numbers as the experiment wrote them,
and a verdict that follows the interval."""

import json

import pytest

from benchmarks import corp_summary as S


def _row(method, reward, task="math"):
    return {"task": task, "method": method, "reward": reward, "rewards": [reward] * 4}


ROWS = [_row("base model", 0.10), _row("RandOpt best member (N=200)", 0.20),
        _row("RandOpt top-8 vote (N=200)", 0.25),
        _row("RandOpt best member (N=50, CoRP's budget)", 0.15),
        _row("CoRP gated (N=50), gate kept the base", 0.10),
        _row("CoRP gated (N=50) low-rank, rank 32, not exported", 0.05),
        _row("CoRP gated: best Stage-1 candidate, ungated (N=50)", 0.30),
        _row("CoRP released (N=50)", 0.28)]


def _cmp(method, against, diff, low, high, mde=0.05, task="math"):
    return {"task": task, "method": method, "against": against, "diff": diff,
            "ci95": [low, high], "mde80": mde, "n": 4}


def test_rows_by_role_skip_budget_low_rank_and_refused_candidates():
    rows = S.pick_rows(ROWS, "math")
    assert {k: v["reward"] for k, v in rows.items()} == {
        "base": 0.10, "best": 0.20, "vote": 0.25, "gated": 0.10, "released": 0.28}
    assert S.pick_rows(ROWS, "code") == {}


@pytest.mark.parametrize("low, high, expected", [
    (0.01, 0.2, "better"), (-0.2, -0.01, "worse"), (-0.01, 0.2, "not shown"),
    (0.0, 0.2, "not shown")])
def test_verdict_follows_the_interval(low, high, expected):
    assert S.verdict(_cmp("a", "b", 0.1, low, high)).startswith(expected)
    assert S.verdict(None) == "no paired comparison"
    assert S.verdict(_cmp("a", "b", 0.0, 0.0, 0.0, 0.0)) == "same reward on every prompt"


def test_summary_quotes_the_experiments_own_comparisons(tmp_path):
    best = "RandOpt best member (N=200)"
    paired = [_cmp("CoRP released (N=50)", best, 0.08, 0.02, 0.14, 0.061),
              _cmp("CoRP gated (N=50), gate kept the base", best, -0.10, -0.16, -0.04),
              _cmp("CoRP released (N=50)", "base model", 0.18, 0.1, 0.26)]
    path = tmp_path / "exp.json"
    path.write_text(json.dumps({"rows": ROWS, "paired": paired}))
    out = tmp_path / "summary.md"
    assert S.main([str(out), str(path)]) == 0
    line = next(x for x in out.read_text().splitlines() if x.startswith("| exp |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[:8] == ["exp", "math", "4", "0.100", "0.200", "0.250",
                         "0.100 (gate kept the base)", "0.280"]
    assert cells[8] == "-0.100 [-0.160, -0.040] (0.050)"
    assert cells[9] == "+0.080 [+0.020, +0.140] (0.061)"
    assert cells[10].startswith("worse") and cells[11].startswith("better")


def test_results_without_paired_comparisons_are_refused(tmp_path):
    path = tmp_path / "old.json"
    path.write_text(json.dumps({"rows": ROWS}))
    with pytest.raises(ValueError, match="no paired comparisons"):
        S.main([str(tmp_path / "o.md"), str(path)])
