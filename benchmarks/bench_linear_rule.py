"""The measurements behind perturbed_linear's fused-vs-chunked rule, with paired intervals.

For each weight shape and token count, the fused kernel and the chunked strategy (each forced)
and "materialize W + sigma*eps, then F.linear" are timed round by round; the table gives, for
each pair, the median of the per-round time ratios and its 95% bootstrap interval, and which
strategy the dispatcher picks. A rule is backed when the pick is never shown slower than the
other strategy (its interval wholly below 1) and never shown slower than materializing.

    .venv/bin/python -m benchmarks.bench_linear_rule [--device cpu|cuda] [--output FILE.md]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

import corp_kernels as ck
from corp.outputs import write_atomic

from ._measure import interleaved_times
from .run import (RESULTS_DIR, SIGMA, forced_strategies, ratio_interval, device_name,
                  materialized_linear)

# Decoder layer shapes (SmolLM2-135M's k/v, q/o, MLP up and down; square layers) around the
# C++ backend's 4 MiB chunk: one chunk up to 1024 x 1024 in float32, two from 2048 x 576.
SHAPES = [(192, 576), (576, 576), (1536, 576), (576, 1536), (1024, 1024), (2048, 576),
          (2048, 2048)]
TOKENS = [1, 4, 16, 64, 128, 256, 512]


def _cell(times, baseline, pick) -> tuple[str, float]:
    """'median [lo, hi]' of baseline / pick over the rounds, and hi."""
    r = ratio_interval(times, baseline, pick)
    return f"{r['ratio_paired']:.2f} [{r['ratio_lo']:.2f}, {r['ratio_hi']:.2f}]", r["ratio_hi"]


def measure(device: str, dtype: torch.dtype, shapes, tokens, repeats: int) -> list[dict]:
    rows = []
    for n_out, n_in in shapes:
        w = torch.randn(n_out, n_in, device=device, dtype=dtype) / n_in ** 0.5
        for t in tokens:
            x = torch.randn(t, n_in, device=device, dtype=dtype)
            strategies = forced_strategies(lambda: ck.perturbed_linear(x, w, None, 11, SIGMA))
            times = interleaved_times({**strategies,
                                       "materialize": lambda: materialized_linear(x, w)},
                                      repeats, device)
            pick = _picked(x, w)
            other = "chunked" if pick == "fused" else "fused"
            vs_other, hi_other = _cell(times, f"forced_{other}", f"forced_{pick}")
            vs_mat, hi_mat = _cell(times, "materialize", f"forced_{pick}")
            rows.append({"W": f"{n_out}x{n_in}", "T": t, "pick": pick,
                         "other_over_pick": vs_other, "materialize_over_pick": vs_mat,
                         "pick_shown_slower": hi_other < 1 or hi_mat < 1})
            print(f"  {rows[-1]}", flush=True)
    return rows


def strategy_backend(device: str) -> str:
    """The backend perturbed_linear dispatches to on `device`, which must be one with the two
    strategies (the C++ or the Triton backend): the torch reference has no rule to measure."""
    from corp_kernels import dispatch
    backend = dispatch.resolve(None, torch.device(device), "perturbed_linear")
    if backend not in ("cpp", "triton"):
        raise RuntimeError(f"perturbed_linear runs on the {backend!r} backend on {device}, which "
                           f"has no fused/chunked rule to measure (backends: "
                           f"{ {n: s.reason for n, s in dispatch.backends().items()} })")
    return backend


def _picked(x, w) -> str:
    """The strategy the dispatched backend's rule picks for this call (stream offset 0)."""
    if strategy_backend(x.device.type) == "cpp":
        from corp_kernels.impl import cpp
        return cpp.choose_strategy(x.numel() // w.shape[1], w.numel())
    from corp_kernels.triton_kernels.perturbed_linear import choose_strategy
    return choose_strategy(x.numel() // w.shape[1], aligned=w.shape[1] % 4 == 0)


def render(rows: list[dict], name: str, dtype: torch.dtype, repeats: int) -> str:
    lines = [f"# perturbed_linear: fused vs chunked on {name} ({dtype}, torch {torch.__version__}, "
             f"{time.strftime('%Y-%m-%d')})", "",
             "Reproduce: `python -m benchmarks.bench_linear_rule`. Each cell: median over "
             f"{repeats} rounds of the per-round time ratio, [95% bootstrap interval]; > 1 means "
             "the dispatcher's pick is faster. An interval holding 1 is a tie.", "",
             "| W | T | pick | other strategy / pick | materialize / pick | pick shown slower |",
             "|---|---:|---|---|---|---|"]
    for r in rows:
        slower = "yes" if r["pick_shown_slower"] else "no"
        lines.append(f"| {r['W']} | {r['T']} | {r['pick']} | {r['other_over_pick']} | "
                     f"{r['materialize_over_pick']} | {slower} |")
    slower = sum(r["pick_shown_slower"] for r in rows)
    lines += ["", f"Rows where the pick is shown slower than the other strategy or than "
              f"materializing: {slower} of {len(rows)}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="two small shapes, few rounds")
    args = parser.parse_args(argv)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    shapes, tokens = (SHAPES[:2], TOKENS[:2]) if args.quick else (SHAPES, TOKENS)
    repeats = 3 if args.quick else args.repeats
    try:
        strategy_backend(args.device)
    except RuntimeError as exc:
        print(f"bench_linear_rule: {exc}", file=sys.stderr)
        return 2
    rows = measure(args.device, dtype, shapes, tokens, repeats)
    name = device_name(args.device)
    out = args.output or RESULTS_DIR / f"linear-rule-{name}.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(str(out), render(rows, name, dtype, repeats))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
