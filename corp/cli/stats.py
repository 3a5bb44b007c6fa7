"""Result rows and their statistics, shared by the commands and the experiment."""

from __future__ import annotations

import numpy as np


def bootstrap_ci(values: np.ndarray, draws: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean over test examples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (draws, len(values)))
    means = np.asarray(values)[idx].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


def result_row(method: str, scores, passes: int, seconds: float | None) -> dict:
    """One row of a results table: test reward with its 95% interval, accuracy, cost."""
    return {"method": method, "test_reward": scores.reward, "test_accuracy": scores.accuracy,
            "ci95_reward": bootstrap_ci(scores.rewards), "forward_passes_per_example": passes,
            "seconds": seconds}


def results_table(rows: list[dict]) -> str:
    lines = ["| method | test reward (95% CI) | test accuracy | forward passes / example |",
             "|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95_reward"]
        lines.append(f"| {r['method']} | {r['test_reward']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{r['test_accuracy']:.3f} | {r['forward_passes_per_example']} |")
    return "\n".join(lines)


def _stat(name: str, stats: dict) -> str:
    return (f"{name}: gain {stats['mean_diff']:+.3f} (LCB {stats['lcb']:+.3f}) on "
            f"{stats['n']} examples, detectable {stats.get('mde80', float('nan')):+.3f} at 80% "
            "power")


def gate_lines(decisions: list[dict]) -> list[str]:
    """One line per CoRP decision, with each gate's gain next to the gain it could have detected:
    "rejected ... gain +0.03, detectable +0.14" reads "too few examples to tell", not "no gain"."""
    lines = []
    for d in decisions:
        detail = d["detail"]
        where = d["stage"] + (f" round {detail['round']}" if "round" in detail else "")
        verdict = "accepted" if d["accepted"] else "rejected"
        parts = [_stat(label, detail[key]) for key, label in (("gate", "gate"),
                                                               ("probe", "probe"))
                 if isinstance(detail.get(key), dict) and "mean_diff" in detail[key]]
        why = f" ({detail['why']})" if "why" in detail else ""
        lines.append(f"- {where}: {verdict}{why}" + ("; " + "; ".join(parts) if parts else ""))
    return lines
