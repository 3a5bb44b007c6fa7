"""Kill rate per module from a mutmut run, with every surviving mutant listed (issue 17).

    pip install mutmut==3.8.1
    mutmut run "corp.method.export*"          # or no argument: every module in [tool.mutmut]
    python -m benchmarks.mutation_report benchmarks/results/mutation-corp.md

A mutant that survives is either a gap in the tests (write the test, rerun the mutant:
`mutmut run NAME`) or equivalent to the original code (no test can kill it). Equivalent
mutants are listed with the reason in benchmarks/mutation-equivalent.json
({"mutant name": "why no behaviour changes"}) and left out of the denominator. So are cosmetic
ones, whose reason starts with "cosmetic:" (a figure's font size, colour, legend placement or text
rotation: what the figure shows, its values, positions, labels and notes, is tested); they get a
column of their own, so that a reader sees how many were set aside that way:

    kill rate = detected / (mutants tried - equivalent - cosmetic)

where detected = killed by a failing test, or stopped by the time limit or a crash (the
mutant changed behaviour: an infinite loop is a bug the tests noticed). A mutant that no test
reaches ("no tests") counts as a survivor. Modules with mutants not yet tried are marked
incomplete rather than given a rate, unless they were tried on a random sample:

    python -m benchmarks.mutation_report benchmarks/mutation-sample-analysis.txt \
        --draw corp/method/analysis.py 420 mutation-sample-analysis-2026-11-26
    mutmut run $(cat benchmarks/mutation-sample-analysis.txt)
    python -m benchmarks.mutation_report OUT.md --sample benchmarks/mutation-sample-analysis.txt

A sample file lists mutant names drawn uniformly at random (without replacement) from one
module's mutants; that module's row then counts those mutants only and gives the kill rate as an
estimate with its 95% Wilson interval (finite-population corrected). Mutants of the module run
outside the sample (e.g. survivors rerun after a new test) are left out of its row, so that the
estimate stays a random sample's.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field

from corp.outputs import write_atomic

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

TARGET = 0.85
EQUIVALENT_FILE = os.path.join("benchmarks", "mutation-equivalent.json")

# mutmut's exit codes (mutmut.stats.status_by_exit_code, 3.8), grouped for the report
KILLED = {1, 3}
TIMEOUT_OR_CRASH = {36, -24, 24, 152, 255, -11, -9}
SURVIVED = {0}
NO_TESTS = {5, 33}


@dataclass
class ModuleStats:
    path: str
    tried: int = 0
    not_tried: int = 0
    detected: int = 0
    survivors: list[str] = field(default_factory=list)  # survived or no tests, not equivalent
    equivalent: list[str] = field(default_factory=list)
    cosmetic: list[str] = field(default_factory=list)  # a figure's look only (see the docstring)
    other: dict[str, int] = field(default_factory=dict)  # skipped, type check: not counted
    population: int | None = None  # all of the module's mutants, when `tried` is a sample

    @property
    def partial_rate(self) -> float | None:
        """The rate over the mutants tried so far (None when none was)."""
        denominator = self.detected + len(self.survivors)
        return self.detected / denominator if denominator else None

    @property
    def rate(self) -> float | None:
        """The module's kill rate; None until every mutant has been tried."""
        return None if self.not_tried or self.population else self.partial_rate

    def interval(self, z: float = 1.96) -> tuple[float, float] | None:
        """95% Wilson interval of a sampled module's kill rate, with the finite-population
        correction (the sample is drawn without replacement from `population` mutants)."""
        n = self.detected + len(self.survivors)
        if not self.population or not n:
            return None
        set_aside = len(self.equivalent) + len(self.cosmetic)
        k = self.population - set_aside * self.population / max(self.tried, 1)
        fpc = math.sqrt(max(k - n, 0) / max(k - 1, 1))  # k: estimated non-equivalent mutants
        p, zz = self.detected / n, (z * fpc) ** 2
        centre = (p + zz / (2 * n)) / (1 + zz / n)
        half = math.sqrt(p * (1 - p) / n + zz / (4 * n * n)) * z * fpc / (1 + zz / n)
        return max(0.0, centre - half), min(1.0, centre + half)


def module_stats(path: str, exit_codes: dict[str, int | None],
                 equivalent: dict[str, str], sample: set[str] | None = None) -> ModuleStats:
    """Counts over the module's mutants, or over those in `sample` (a random sample of them)."""
    stats = ModuleStats(path)
    chosen = (sample or set()) & set(exit_codes)
    if chosen:
        stats.population = len(exit_codes)
        exit_codes = {name: code for name, code in exit_codes.items() if name in chosen}
    for name, code in sorted(exit_codes.items()):
        if code is None:
            stats.not_tried += 1
            continue
        stats.tried += 1
        if code in KILLED or code in TIMEOUT_OR_CRASH:
            stats.detected += 1
        elif code in SURVIVED or code in NO_TESTS:
            if name not in equivalent:
                stats.survivors.append(name)
            elif equivalent[name].startswith("cosmetic:"):
                stats.cosmetic.append(name)
            else:
                stats.equivalent.append(name)
        else:
            stats.other[str(code)] = stats.other.get(str(code), 0) + 1
    return stats


def load_exit_codes(root: str, path: str) -> dict[str, int | None]:
    meta = os.path.join(root, "mutants", path + ".meta")
    if not os.path.exists(meta):
        return {}
    with open(meta) as f:
        return json.load(f)["exit_code_by_key"]


def draw_sample(root: str, path: str, size: int, label: str,
                exclude: set[str] = frozenset()) -> list[str]:
    """`size` of the module's mutant names drawn uniformly without replacement, the same for the
    same (label, size) and the same mutants: random.Random(label) over the sorted names, leaving
    out `exclude` (an earlier sample: a fresh one measures tests written after it without the
    bias of tests aimed at its survivors)."""
    import random
    names = sorted(set(load_exit_codes(root, path)) - set(exclude))
    if not names:
        raise SystemExit(f"no mutants of {path} under {root}/mutants: run `mutmut run` (or "
                         f"`mutmut print-time-estimates`) once to generate them")
    return sorted(random.Random(label).sample(names, min(size, len(names))))


def read_names(paths) -> set[str]:
    """The mutant names listed in these files (one per line, as --draw writes them)."""
    names: set[str] = set()
    for path in paths:
        with open(path) as f:
            names |= set(f.read().split())
    return names


def configured_modules(root: str) -> list[str]:
    with open(os.path.join(root, "pyproject.toml"), "rb") as f:
        return list(tomllib.load(f)["tool"]["mutmut"]["only_mutate"])


def diff_of(root: str, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "mutmut", "show", name], cwd=root,
                         capture_output=True, text=True)
    text = out.stdout.strip()
    # the header line repeats the name; keep the diff
    return "\n".join(line for line in text.splitlines() if not line.startswith("# "))


def render(stats: list[ModuleStats], equivalent: dict[str, str], diffs: dict[str, str],
           header: str = "") -> str:
    lines = ["# Mutation testing of corp/ (mutmut)", ""]
    if header:
        lines += [header, ""]
    lines += [f"Target: at least {TARGET:.0%} of non-equivalent mutants detected per module.", "",
              "| module | mutants | tried | detected | survived | equivalent | cosmetic | "
              "kill rate |",
              "|---|---|---|---|---|---|---|---|"]
    for s in stats:
        total = s.population or s.tried + s.not_tried
        if s.population and s.partial_rate is not None and not s.not_tried:
            lo, hi = s.interval()
            rate = (f"{s.partial_rate:.1%} [{lo:.1%}, {hi:.1%}], random sample of {s.tried} of "
                    f"{s.population}" + (" (below target)" if hi < TARGET else
                                         " (target inside the interval)" if lo < TARGET else ""))
        elif s.rate is not None:
            rate = f"{s.rate:.1%}" + (" (below target)" if s.rate < TARGET else "")
        elif s.partial_rate is not None:
            rate = f"incomplete: {s.partial_rate:.1%} of the {s.tried} tried"
        else:
            rate = "incomplete"
        lines.append(f"| {s.path} | {total} | {s.tried} | {s.detected} | {len(s.survivors)} | "
                     f"{len(s.equivalent)} | {len(s.cosmetic)} | {rate} |")
    for s in stats:
        if not (s.survivors or s.equivalent or s.cosmetic):
            continue
        lines += ["", f"## {s.path}", ""]
        if s.survivors:
            lines += [f"### Surviving ({len(s.survivors)}): gaps in the tests", ""]
            for name in s.survivors:
                lines += [f"- `{name}`", "", "```diff", diffs.get(name, "(diff not shown)"),
                          "```", ""]
        if s.equivalent:
            lines += [f"### Equivalent ({len(s.equivalent)})", ""]
            lines += [f"- `{name}`: {equivalent[name]}" for name in s.equivalent]
        if s.cosmetic:
            lines += ["", f"### Cosmetic ({len(s.cosmetic)})", ""]
            lines += [f"- `{name}`: {equivalent[name].removeprefix('cosmetic:').strip()}"
                      for name in s.cosmetic]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("output", help="the markdown report to write")
    p.add_argument("--root", default=".", help="project root (holds mutants/ and pyproject.toml)")
    p.add_argument("--header", default="", help="a paragraph for the top: machine, command, date")
    p.add_argument("--no-diffs", action="store_true", help="skip `mutmut show` for survivors")
    p.add_argument("--sample", action="append", default=[], metavar="FILE",
                   help="mutant names drawn at random from one module (one per line); that "
                        "module's row counts them only, with a 95%% interval")
    p.add_argument("--draw", nargs=3, metavar=("MODULE", "SIZE", "LABEL"),
                   help="print SIZE mutant names of MODULE (e.g. corp/method/analysis.py) drawn "
                        "at random with seed LABEL to OUTPUT (one per line), then stop")
    p.add_argument("--exclude", action="append", default=[], metavar="FILE",
                   help="with --draw: leave out the names in FILE (an earlier sample)")
    args = p.parse_args(argv)
    if args.draw:
        module, size, label = args.draw
        names = draw_sample(args.root, module, int(size), label, read_names(args.exclude))
        write_atomic(args.output, "\n".join(names) + "\n")
        return 0
    sample = read_names(args.sample)
    eq_path = os.path.join(args.root, EQUIVALENT_FILE)
    equivalent = json.load(open(eq_path)) if os.path.exists(eq_path) else {}
    codes = {m: load_exit_codes(args.root, m) for m in configured_modules(args.root)}
    stats = [module_stats(m, c, equivalent, sample) for m, c in codes.items()]
    unknown = sorted(set(equivalent).difference(*codes.values()))
    if unknown:  # a stale entry would silently excuse nothing; say so
        print(f"warning: {len(unknown)} equivalent entries name no mutant: {unknown[:3]}",
              file=sys.stderr)
    diffs = {} if args.no_diffs else {n: diff_of(args.root, n)
                                      for s in stats for n in s.survivors}
    text = render(stats, equivalent, diffs, args.header)
    write_atomic(args.output, text)
    print(text.split("\n## ")[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
