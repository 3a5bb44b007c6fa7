"""The corp-kernels benchmark suite: ours vs. the baseline a user would write, in one run.

    python -m benchmarks.run            # full sweep (the issue's shapes); ~10 min on 2 CPU cores
    python -m benchmarks.run --quick    # a small sweep for a smoke check

Prints a markdown table and writes benchmarks/results/<device>.json. Ratios are baseline time
divided by ours (> 1: we are faster), measured side by side (interleaved medians).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import corp_kernels as ck
from corp_kernels import dispatch
from corp_kernels._chunked import STRATEGIES, strategy_forced

from corp_kernels._memory import allocation_profile

from ._measure import (interleaved_medians, interleaved_times, medians, paired_ratio,
                       paired_ratio_interval)

RESULTS_DIR = Path(__file__).parent / "results"
SIGMA = 1e-3


@dataclass(frozen=True)
class Row:
    bench: str
    config: str
    ours_s: float
    baseline_s: float
    ratio: float  # baseline / ours
    extra: dict


def _row(bench, config, ours, baseline, **extra):
    row = Row(bench, config, ours, baseline, baseline / ours, extra)
    print(f"  {bench:<22} {config:<34} ours {ours * 1e3:9.3f} ms  baseline "
          f"{baseline * 1e3:9.3f} ms  x{row.ratio:5.2f}  {extra}", file=sys.stderr)
    return row


def bench_noise(device, dtype, sizes, repeats):
    rows = []
    for n in sizes:
        # Both allocate their output, as a caller would; writing into a preallocated `out` would
        # spare randn the page faults of a fresh 64 MiB tensor and not ours.
        t = interleaved_medians({
            "ours": lambda: ck.gaussian_noise((n,), 7, dtype=dtype, device=device),
            "randn": lambda: torch.randn(n, dtype=dtype, device=device),
        }, repeats, device)
        rows.append(_row("noise_generation", f"n={n}", t["ours"], t["randn"],
                         ours_elements_per_s=n / t["ours"], randn_elements_per_s=n / t["randn"]))
    return rows


def materialized_linear(x, w):
    """The baseline of the matmul ops: W + sigma * eps materialized with our generator (the
    noise of the seed the benchmarks call the ops with), then F.linear."""
    eps = ck.gaussian_noise(w.shape, 11, dtype=w.dtype, device=w.device)
    return F.linear(x, w + SIGMA * eps)


def forced_strategies(call):
    """The call under each strategy forced ("fused", "chunked"), timed beside the dispatcher's own
    choice: the rows behind the dispatchers' rules (corp_kernels/impl/cpp.py,
    corp_kernels/triton_kernels/perturbed_linear.py)."""
    def forced(strategy):
        def run():
            with strategy_forced(strategy):
                return call()
        return run
    return {f"forced_{s}": forced(s) for s in STRATEGIES}


def ratio_interval(times, baseline, ours):
    """95% interval of baseline / ours, paired by round: below 1 only if ours is shown slower."""
    lo, hi = paired_ratio_interval(times[baseline], times[ours])
    return {"ratio_paired": paired_ratio(times[baseline], times[ours]), "ratio_lo": lo,
            "ratio_hi": hi}


def _strategy_ratios(times, baseline):
    """baseline / time of each forced strategy: the dispatcher's choice should be the larger."""
    return {f"{s}_ratio": times[baseline] / times[f"forced_{s}"] for s in STRATEGIES}


def bench_perturbed_linear(device, dtype, tokens_list, shapes, repeats):
    rows = []
    for n_out, n_in in shapes:
        w = torch.randn(n_out, n_in, device=device, dtype=dtype) / n_in ** 0.5
        for tokens in tokens_list:
            x = torch.randn(tokens, n_in, device=device, dtype=dtype)

            def ours():  # the dispatcher's pick of strategy
                return ck.perturbed_linear(x, w, None, 11, SIGMA)

            def materialize():
                return materialized_linear(x, w)

            times = interleaved_times({"ours": ours, "materialize": materialize,
                                       "plain": lambda: F.linear(x, w),
                                       **forced_strategies(ours)}, repeats, device)
            t = medians(times)
            extra = {"plain_s": t["plain"], "ours_over_plain": t["ours"] / t["plain"],
                     **ratio_interval(times, "materialize", "ours"),
                     **_strategy_ratios(t, "materialize")}
            if device == "cpu":
                # Peak bytes allocated during the call (output included) vs. W's own size.
                extra.update(w_bytes=w.numel() * w.element_size(),
                             ours_peak_bytes=allocation_profile(ours)[0],
                             materialize_peak_bytes=allocation_profile(materialize)[0])
            rows.append(_row("perturbed_linear", f"T={tokens} W={n_out}x{n_in}", t["ours"],
                             t["materialize"], **extra))
    return rows


def bench_population(device, dtype, members, tokens, shapes, repeats):
    rows = []
    for n_out, n_in in shapes:
        w = torch.randn(n_out, n_in, device=device, dtype=dtype) / n_in ** 0.5
        x = torch.randn(members, tokens, n_in, device=device, dtype=dtype)
        seeds = list(range(100, 100 + members))

        def sequential():
            outs = []
            for p, s in enumerate(seeds):
                eps = ck.gaussian_noise(w.shape, s, dtype=dtype, device=device)
                outs.append(F.linear(x[p], w + SIGMA * eps))
            return torch.stack(outs)

        def population():
            return ck.population_linear(x, w, None, seeds, SIGMA)

        times = interleaved_times({"population": population, "sequential": sequential,
                                   **forced_strategies(population)}, repeats, device)
        t = medians(times)
        rows.append(_row("population_linear", f"P={members} T={tokens} W={n_out}x{n_in}",
                         t["population"], t["sequential"],
                         **ratio_interval(times, "sequential", "population"),
                         **_strategy_ratios(t, "sequential")))
    return rows


def bench_weighted_sum(device, shape, ks, repeats):
    rows = []
    numel = shape[0] * shape[1]
    for k in ks:
        seeds = list(range(1, k + 1))
        weights = torch.linspace(-1, 1, k).tolist()

        def ours():
            return ck.weighted_noise_sum(shape, seeds, weights, device=device)

        def torch_loop():
            acc = torch.zeros(shape, device=device)
            for s, wt in zip(seeds, weights):
                g = torch.Generator(device=device).manual_seed(s)
                acc += wt * torch.randn(shape, generator=g, device=device)
            return acc

        t = interleaved_medians({"ours": ours, "loop": torch_loop}, repeats, device)
        extra = {}
        if device == "cpu":
            peak_ours, _ = allocation_profile(ours)
            peak_loop, _ = allocation_profile(torch_loop)
            extra = {"ours_peak_over_output": peak_ours / (numel * 4),
                     "loop_peak_over_output": peak_loop / (numel * 4)}
        rows.append(_row("weighted_noise_sum", f"K={k} shape={shape[0]}x{shape[1]}", t["ours"],
                         t["loop"], **extra))
    return rows


def bench_rsvd(device, shape, k, rank, repeats):
    seeds = list(range(1, k + 1))
    weights = torch.linspace(1, 0.1, k).tolist()

    def ours():
        return ck.randomized_svd_noise(shape, seeds, weights, rank, device=device)

    def materialized():
        delta = ck.weighted_noise_sum(shape, seeds, weights, device=device)
        return torch.svd_lowrank(delta, q=rank + 10, niter=2)

    def ours_budget():  # the sum fits the budget: built once, then plain matmuls
        return ck.randomized_svd_noise(shape, seeds, weights, rank, device=device,
                                       memory_budget_bytes=shape[0] * shape[1] * 4)

    t = interleaved_medians({"ours": ours, "budget": ours_budget, "materialized": materialized},
                            repeats, device)
    config = f"K={k} rank={rank} shape={shape[0]}x{shape[1]}"
    extra, extra_budget = {}, {}
    if device == "cpu":
        baseline_peak = allocation_profile(materialized)[0]
        extra = {"ours_peak_bytes": allocation_profile(ours)[0],
                 "materialized_peak_bytes": baseline_peak}
        extra_budget = {"ours_peak_bytes": allocation_profile(ours_budget)[0],
                        "materialized_peak_bytes": baseline_peak}
    return [_row("randomized_svd_noise", f"{config} streaming", t["ours"], t["materialized"],
                 **extra),
            _row("randomized_svd_noise", f"{config} budget", t["budget"], t["materialized"],
                 **extra_budget)]


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name().replace(" ", "-")
    return f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"


def to_markdown(rows: list[Row]) -> str:
    lines = ["| benchmark | config | ours (ms) | baseline (ms) | baseline / ours | notes |",
             "|---|---|---:|---:|---:|---|"]
    for r in rows:
        extra = dict(r.extra)
        ratio = f"{r.ratio:.2f}"
        if "ratio_lo" in extra:  # the median of per-round ratios and its 95% interval
            ratio = (f"{extra.pop('ratio_paired'):.2f} [{extra.pop('ratio_lo'):.2f}, "
                     f"{extra.pop('ratio_hi'):.2f}]")
        notes = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                          for k, v in extra.items())
        lines.append(f"| {r.bench} | {r.config} | {r.ours_s * 1e3:.3f} | "
                     f"{r.baseline_s * 1e3:.3f} | {ratio} | {notes} |")
    return "\n".join(lines)


BASELINES = {
    "noise_generation": "torch.randn of the same size (both allocate)",
    "perturbed_linear": "materialize W + sigma*eps (our generator), then F.linear (fused_ratio, "
                        "chunked_ratio: that baseline over each strategy forced; ours is the "
                        "dispatcher's pick)",
    "population_linear": "8 sequential members, each materialized (fused_ratio, chunked_ratio: "
                         "as for perturbed_linear)",
    "weighted_noise_sum": "loop: torch.Generator per member, acc += w * torch.randn",
    "randomized_svd_noise": "materialize the sum, then torch.svd_lowrank(q=rank+10, niter=2)",
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sweep for a smoke check")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", type=Path, default=None,
                        help="results JSON (default benchmarks/results/<device>[-quick].json)")
    args = parser.parse_args(argv)
    device = args.device
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    started = time.time()
    if args.quick:
        rows = (bench_noise(device, dtype, [1 << 20], 5)
                + bench_perturbed_linear(device, dtype, [1, 16], [(576, 576), (1536, 576)], 5)
                + bench_population(device, dtype, 8, 16, [(576, 576)], 3)
                + bench_weighted_sum(device, (576, 576), [8], 3)
                + bench_rsvd(device, (576, 576), 8, 8, 3))
    else:
        shapes = [(576, 576), (1536, 576), (2048, 576), (2048, 2048), (4096, 4096)]
        rows = (bench_noise(device, dtype, [1 << 20, 1 << 24], 9)
                + bench_perturbed_linear(device, dtype, [1, 4, 16, 64, 128, 1024], shapes, 15)
                + bench_population(device, dtype, 8, 16, [(576, 576), (2048, 2048)], 9)
                + bench_weighted_sum(device, (1536, 576), [8, 50, 500], 3)
                + bench_rsvd(device, (2048, 2048), 50, 16, 3))
    name = device_name(device)
    table = to_markdown(rows)
    print(f"## corp-kernels benchmarks on {name} ({dtype}, torch {torch.__version__}, backends "
          f"{[b for b, s in dispatch.backends().items() if s.available]})\n")
    print(table)
    print("\nBaselines: " + "; ".join(f"{k}: {v}" for k, v in BASELINES.items()))
    output = args.output or RESULTS_DIR / f"{name}{'-quick' if args.quick else ''}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({
        "device": name, "dtype": str(dtype), "torch": torch.__version__,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": time.time() - started, "baselines": BASELINES,
        "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"\nwrote {output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
