"""The mutation report's arithmetic (benchmarks/mutation_report.py): what counts as detected, what
as a survivor, and that an unfinished module gets no rate."""

import json
import os

from benchmarks.mutation_report import main, module_stats


def test_detected_survivors_and_equivalent():
    codes = {"m.f__mutmut_1": 1, "m.f__mutmut_2": 0, "m.f__mutmut_3": 33,
             "m.f__mutmut_4": -24, "m.f__mutmut_5": 3, "m.f__mutmut_6": 34}
    s = module_stats("m.py", codes, {})
    assert (s.tried, s.detected, s.not_tried) == (6, 3, 0)
    # survived and "no tests reach it" are both survivors; skipped (34) counts nowhere
    assert s.survivors == ["m.f__mutmut_2", "m.f__mutmut_3"]
    assert s.other == {"34": 1}
    assert s.rate == 3 / 5
    s = module_stats("m.py", codes, {"m.f__mutmut_2": "same value either way"})
    assert s.equivalent == ["m.f__mutmut_2"] and s.survivors == ["m.f__mutmut_3"]
    assert s.rate == 3 / 4
    # an equivalent entry does not excuse a killed mutant twice
    assert module_stats("m.py", codes, {"m.f__mutmut_1": "x"}).rate == 3 / 5


def test_unfinished_module_has_no_rate():
    s = module_stats("m.py", {"a": 1, "b": None, "c": 0}, {})
    assert s.rate is None and s.partial_rate == 0.5
    assert module_stats("m.py", {}, {}).rate is None


def test_report_file(tmp_path):
    root = tmp_path
    (root / "pyproject.toml").write_text(
        '[tool.mutmut]\nonly_mutate = ["pkg/a.py", "pkg/b.py"]\n')
    os.makedirs(root / "mutants" / "pkg")
    meta = {"exit_code_by_key": {"pkg.a.f__mutmut_1": 1, "pkg.a.f__mutmut_2": 0},
            "hash_by_function_name": {}, "durations_by_key": {},
            "estimated_durations_by_key": {}}
    (root / "mutants" / "pkg" / "a.py.meta").write_text(json.dumps(meta))
    out = root / "report.md"
    assert main([str(out), "--root", str(root), "--no-diffs"]) == 0
    text = out.read_text()
    assert "| pkg/a.py | 2 | 2 | 1 | 1 | 0 | 50.0% (below target) |" in text
    assert "| pkg/b.py | 0 | 0 | 0 | 0 | 0 | incomplete |" in text
    assert "`pkg.a.f__mutmut_2`" in text
