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
    assert "| pkg/a.py | 2 | 2 | 1 | 1 | 0 | 0 | 50.0% (below target) |" in text
    assert "| pkg/b.py | 0 | 0 | 0 | 0 | 0 | 0 | incomplete |" in text
    assert "`pkg.a.f__mutmut_2`" in text


def test_a_sampled_module_is_an_estimate_over_its_sample_only():
    from benchmarks.mutation_report import ModuleStats
    codes = {f"m.f__mutmut_{i}": None for i in range(1000)}
    sample = {f"m.f__mutmut_{i}" for i in range(0, 1000, 5)}  # 200 of 1000
    for i, name in enumerate(sorted(sample)):
        codes[name] = 0 if i < 20 else 1  # 180 of 200 detected
    codes["m.f__mutmut_1"] = 0  # a survivor outside the sample (rerun later): not counted
    s = module_stats("m.py", codes, {}, sample)
    assert (s.population, s.tried, s.detected, len(s.survivors)) == (1000, 200, 180, 20)
    assert s.rate is None and s.partial_rate == 0.9
    lo, hi = s.interval()
    # Wilson with the finite-population correction sqrt((1000-200)/999): narrower than without
    plain = ModuleStats("m.py", tried=200, detected=180, survivors=["x"] * 20, population=10**9)
    plo, phi = plain.interval()
    assert 0.85 < plo < lo < 0.9 < hi < phi < 0.94
    assert abs(plo - 0.8506) < 1e-3 and abs(phi - 0.9343) < 1e-3  # Wilson 180/200, z = 1.96
    # a module none of whose mutants is in the sample is counted whole
    assert module_stats("n.py", {"n.g__mutmut_1": 1}, {}, sample).population is None


def test_report_of_a_sample(tmp_path):
    root = tmp_path
    (root / "pyproject.toml").write_text('[tool.mutmut]\nonly_mutate = ["pkg/a.py"]\n')
    os.makedirs(root / "mutants" / "pkg")
    codes = {f"pkg.a.f__mutmut_{i}": None for i in range(100)}
    codes.update({f"pkg.a.f__mutmut_{i}": 1 for i in range(40)})
    codes["pkg.a.f__mutmut_0"] = 0
    (root / "mutants" / "pkg" / "a.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    (root / "sample.txt").write_text("\n".join(f"pkg.a.f__mutmut_{i}" for i in range(40)) + "\n")
    out = root / "report.md"
    assert main([str(out), "--root", str(root), "--no-diffs", "--sample",
                 str(root / "sample.txt")]) == 0
    row = next(line for line in out.read_text().splitlines() if line.startswith("| pkg/a.py"))
    assert row.startswith("| pkg/a.py | 100 | 40 | 39 | 1 | 0 | 0 | 97.5% [")
    assert row.endswith("], random sample of 40 of 100 |")


def test_cosmetic_mutants_are_set_aside_in_a_column_of_their_own():
    codes = {"m.f__mutmut_1": 1, "m.f__mutmut_2": 0, "m.f__mutmut_3": 0, "m.f__mutmut_4": 0}
    reasons = {"m.f__mutmut_2": "cosmetic: a label's font size",
               "m.f__mutmut_3": "the same value either way"}
    s = module_stats("m.py", codes, reasons)
    assert (s.cosmetic, s.equivalent, s.survivors) == (["m.f__mutmut_2"], ["m.f__mutmut_3"],
                                                       ["m.f__mutmut_4"])
    assert s.rate == 1 / 2


def test_a_drawn_sample_is_reproducible_and_without_replacement(tmp_path):
    import random
    root = tmp_path
    os.makedirs(root / "mutants" / "pkg")
    codes = {f"pkg.a.f__mutmut_{i}": None for i in range(50)}
    (root / "mutants" / "pkg" / "a.py.meta").write_text(json.dumps({"exit_code_by_key": codes}))
    out = root / "sample.txt"
    assert main([str(out), "--root", str(root), "--draw", "pkg/a.py", "10", "label-1"]) == 0
    names = out.read_text().split()
    assert len(set(names)) == 10 and set(names) <= set(codes)
    assert names == sorted(random.Random("label-1").sample(sorted(codes), 10))
    main([str(out), "--root", str(root), "--draw", "pkg/a.py", "10", "label-2"])
    assert out.read_text().split() != names  # another label, another sample
    first = root / "first.txt"
    first.write_text("\n".join(names) + "\n")
    main([str(out), "--root", str(root), "--draw", "pkg/a.py", "40", "label-3", "--exclude",
          str(first)])
    fresh = out.read_text().split()
    assert len(fresh) == 40 and not set(fresh) & set(names)  # disjoint from the first sample
