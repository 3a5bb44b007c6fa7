"""One table over several `corp experiment` results: did CoRP beat the best RandOpt member?

    python -m benchmarks.corp_summary OUT.md RESULTS.json [RESULTS.json ...]

Reads the rows and paired comparisons each experiment wrote (benchmarks/results/<name>.json) and,
per task, puts the base model, RandOpt's best member and top-K vote at the full N, and each CoRP
procedure's committed model side by side, with CoRP's paired difference to the best member (same
test prompts, 95% interval, the difference detectable at 80% power) and a verdict that says
which of "better", "worse" or "not shown" the interval supports. Nothing is recomputed: every
number is the experiment's own, so the summary cannot drift from the tables it summarizes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

PROCEDURES = ("gated", "released")


def _full_n(method: str) -> bool:
    return "CoRP's budget" not in method


def pick_rows(rows: list[dict], task: str) -> dict[str, dict]:
    """The rows of one task the summary shows, by role (missing roles are left out)."""
    mine = [r for r in rows if r["task"] == task]
    out = {}
    for r in mine:
        m = r["method"]
        if m == "base model":
            out["base"] = r
        elif m.startswith("RandOpt best member") and _full_n(m):
            out["best"] = r
        elif m.startswith("RandOpt top-") and _full_n(m):
            out["vote"] = r
        for procedure in PROCEDURES:
            # the committed model: "CoRP gated (N=200)" or "CoRP gated (N=200), gate kept the
            # base"; not its low-rank truncation, nor the candidate a gate refused
            if re.match(rf"CoRP {procedure} \(N=\d+\)(, .*)?$", m) and "low-rank" not in m:
                out[procedure] = r
    return out


def paired(comparisons: list[dict], task: str, method: str, against: str) -> dict | None:
    return next((c for c in comparisons if c["task"] == task and c["method"] == method
                 and c["against"] == against), None)


def verdict(c: dict | None) -> str:
    if c is None:
        return "no paired comparison"
    low, high = c["ci95"]
    if low == high == 0:
        return "same reward on every prompt"
    if low > 0:
        return "better (interval above 0)"
    if high < 0:
        return "worse (interval below 0)"
    return f"not shown (80% power only for differences of {c['mde80']:.3f} or more)"


def _diff(c: dict | None) -> str:
    if c is None:
        return "-"
    return f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}] ({c['mde80']:.3f})"


def summarize(results: list[tuple[str, dict]]) -> str:
    """Markdown for [(name, results JSON)], one row per (experiment, task)."""
    lines = ["| experiment | task | test prompts | base | RandOpt best member | RandOpt top-K vote "
             "| CoRP gated | CoRP released | gated - best [95% CI] (detectable) | released - best "
             "[95% CI] (detectable) | gated vs best | released vs best |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---|"]
    for name, data in results:
        comparisons = data.get("paired")
        if comparisons is None:
            raise ValueError(f"{name} has no paired comparisons (written before `corp experiment` "
                             f"computed them): rerun the experiment to add them")
        for task in dict.fromkeys(r["task"] for r in data["rows"]):
            rows = pick_rows(data["rows"], task)
            if "best" not in rows:
                raise ValueError(f"{name}: task {task!r} has no RandOpt best-member row")

            def reward(role):
                return f"{rows[role]['reward']:.3f}" if role in rows else "-"
            n = len(rows["best"].get("rewards", [])) or "?"
            vs_best = {p: paired(comparisons, task, rows[p]["method"], rows["best"]["method"])
                       if p in rows else None for p in PROCEDURES}
            lines.append(
                f"| {name} | {task} | {n} | {reward('base')} | {reward('best')} | {reward('vote')} "
                f"| {reward('gated')} | {reward('released')} | {_diff(vs_best['gated'])} "
                f"| {_diff(vs_best['released'])} | {verdict(vs_best['gated'])} "
                f"| {verdict(vs_best['released'])} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    out, paths = Path(argv[0]), [Path(p) for p in argv[1:]]
    results = [(p.stem, json.loads(p.read_text())) for p in paths]
    out.write_text(summarize(results))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
