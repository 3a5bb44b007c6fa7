"""Fused decode tiles of perturbed_linear timed against each other on a GPU, in GPU time.

    python -m benchmarks.gpu_fused_tiles [--output FILE.md] [--append] [--budget-s 60]

The fused kernel is bound by its noise generator, so the warps resident per SM, which hide its
latency, matter; registers decide them (benchmarks/results/aot-fused-tiles.md: 16 warps for the
64 x 64 x 64 tile measured on an H200, 40 for the 64 x 32 x 32 tile `_tiles` uses since, on sm_90).
Whether more resident warps make it faster can only be measured. For each weight shape, token
count and member count, every tile of perturbed_linear.DECODE_TILE_CANDIDATES runs forced, beside
"materialize W + sigma*eps, then cuBLAS" and plain F.linear.

On CUDA each timed call is a CUDA graph of at least REPLAYS calls, timed by CUDA events behind a
sleep kernel that keeps the GPU busy while the round is queued, so the host's work (checks,
dispatch, Triton's launcher) drops out. The calls rotate over copies of W that together exceed
twice the L2 cache, so no call finds W cached. Rounds run in a shuffled order; each tile gets
paired 95% intervals against materialize and against the tile `_tiles` uses now. Each tile's
eager output is compared with materialize's (the same rounded W + sigma*eps; only the order of
the sums differs): above ERROR_LIMIT the cell says so and the exit status is 1. The table is
rewritten after every row, so a run cut short keeps what it measured.

Without CUDA it runs one tiny shape eagerly under Triton's interpreter: a check of the script
itself, not a measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from corp.outputs import write_atomic

from ._measure import interleaved_times, paired_ratio, paired_ratio_interval
from .gpu_linear_graphs import graph_of
from .gpu_microbench import materialize_then_linear

SIGMA = 1e-3
REPLAYS = 20
# max |y - y_materialize| / rms(y_materialize) beyond which a tile is wrong, not reordered: one
# bf16 rounding step of an output three times the rms is 0.012.
ERROR_LIMIT = 5e-2
# (N, K): a 7B-sized square layer first (what a short budget must not drop), then a ~0.5B
# decoder's (hidden 896: q/o, MLP up).
SHAPES = [(4096, 4096), (896, 896), (4864, 896)]
# (tokens per member, members): decode of one model, a short prompt, a population step.
CALLS = [(1, 1), (16, 1), (64, 1), (16, 16)]


def _repeated(call, device: str, count: int):
    """call(i) runs the i-th call (on the i-th copy of W). Returns a callable that runs `count`
    calls as one CUDA-graph replay on CUDA, one call elsewhere."""
    if device != "cuda":
        return lambda: call(0)
    return graph_of(lambda: [call(i) for i in range(count)])


def event_times(fns: dict, repeats: int, seed: int = 0) -> dict[str, list[float]]:
    """Seconds of GPU time of each fn, `repeats` rounds in a shuffled order (seeded). A sleep
    kernel ahead of each round keeps the GPU busy while the host queues it, so the events time
    the GPU's work and not the host's launches."""
    for fn in fns.values():
        fn()
    torch.cuda.synchronize()
    order, shuffle = list(fns), random.Random(seed).shuffle
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        shuffle(order)
        torch.cuda._sleep(2_000_000)  # about 1 ms
        marks = []
        for name in order:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fns[name]()
            end.record()
            marks.append((name, start, end))
        torch.cuda.synchronize()
        for name, start, end in marks:
            times[name].append(start.elapsed_time(end) / 1e3)
    return times


def w_copies(w: torch.Tensor) -> list[torch.Tensor]:
    """w and clones of it, together at least twice the L2 cache."""
    if not w.is_cuda:
        return [w]
    l2 = torch.cuda.get_device_properties(w.device).L2_cache_size
    count = max(1, math.ceil(2 * l2 / (w.numel() * w.element_size())))
    return [w] + [w.clone() for _ in range(count - 1)]


def relative_error(y: torch.Tensor, reference: torch.Tensor) -> float:
    """max |y - reference| / rms(reference), in float32."""
    y, reference = y.float(), reference.float()
    scale = reference.pow(2).mean().sqrt().clamp_min(1e-30)
    return float((y - reference).abs().max() / scale)


def measure_call(w, tokens: int, members: int, tiles, device: str, repeats: int) -> dict:
    """Times and errors of every tile for one (W, tokens, members), in one interleaved run."""
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    n_in = w.shape[1]
    seeds = torch.arange(11, 11 + members, dtype=torch.int64)
    sigmas = torch.full((members,), SIGMA)
    x = torch.randn(members, tokens, n_in, device=device, dtype=w.dtype)
    ws = w_copies(w)

    def fused(tile):
        return lambda i: tpl.population_linear(x, ws[i % len(ws)], None, seeds, sigmas, 0,
                                               "fused", tiles=tile)

    def materialized(i):
        return torch.stack([materialize_then_linear(x[p], ws[i % len(ws)], int(seeds[p]), SIGMA)
                            for p in range(members)])
    reference = materialized(0)
    errors = {tile: relative_error(fused(tile)(0), reference) for tile in tiles}
    # every copy of W once per replay, and at least REPLAYS calls
    count = max(REPLAYS, len(ws)) if device == "cuda" else 1
    fns = {f"tile {tile}": _repeated(fused(tile), device, count) for tile in tiles}
    fns["materialize"] = _repeated(materialized, device, count)
    fns["plain"] = _repeated(lambda i: F.linear(x, ws[i % len(ws)]), device, count)
    times = (event_times(fns, repeats) if device == "cuda"
             else interleaved_times(fns, repeats, device))
    per_call = 1e3 / count
    current = f"tile {tpl._tiles(tokens)}"

    def versus(numerator, denominator):
        lo, hi = paired_ratio_interval(times[numerator], times[denominator])
        return paired_ratio(times[numerator], times[denominator]), lo, hi
    row = {"W": f"{w.shape[0]}x{n_in}", "T": tokens, "P": members, "w_copies": len(ws),
           "calls_per_replay": count,
           "materialize_ms": statistics.median(times["materialize"]) * per_call,
           "plain_ms": statistics.median(times["plain"]) * per_call, "tiles": {}}
    for tile in tiles:
        name = f"tile {tile}"
        row["tiles"][tile] = {"ms": statistics.median(times[name]) * per_call,
                              "materialize_over_tile": versus("materialize", name),
                              "current_over_tile": (versus(current, name) if current in times
                                                    else None),
                              "max_rel_error": errors[tile]}
    return row


def _interval(r) -> str:
    ratio, lo, hi = r
    return f"{ratio:.2f} [{lo:.2f}, {hi:.2f}]"


def render(rows: list[dict], tiles, device_name: str, dtype: torch.dtype, repeats: int,
           graphs: bool, skipped: int = 0, budget_s: float = 0.0) -> str:
    from corp_kernels.triton_kernels.perturbed_linear import _tiles
    timing = (f"GPU time of CUDA-graph replays of at least {REPLAYS} calls, over copies of W "
              "twice the L2 cache (CUDA events)" if graphs else "eager calls")
    lines = [f"## Fused decode tiles on {device_name} ({str(dtype).removeprefix('torch.')}, "
             f"{time.strftime('%Y-%m-%d')})", "",
             f"`python -m benchmarks.gpu_fused_tiles`. ms per call: {timing}, median of "
             f"{repeats} interleaved rounds. Each tile's cell: ms; mat = materialize-then-cuBLAS "
             "/ tile and cur = the tile `_tiles` uses now (marked *) / tile, each the median of "
             "per-round ratios [95% interval], > 1: this tile is faster; err = max |y - "
             f"y_materialize| / rms(y_materialize), ERROR above {ERROR_LIMIT}.", "",
             "| W | T | P | plain ms | materialize ms | "
             + " | ".join(f"{'*' if t == _tiles(16) else ''}{t[0]}x{t[1]}x{t[2]} w{t[3]}"
                          for t in tiles) + " |",
             "|---|---:|---:|---:|---:|" + "---|" * len(tiles)]
    for r in rows:
        cells = []
        for tile in tiles:
            c = r["tiles"][tile]
            versus_current = (f"; cur {_interval(c['current_over_tile'])}"
                              if c["current_over_tile"] and tile != _tiles(r["T"]) else "")
            wrong = "ERROR " if c["max_rel_error"] > ERROR_LIMIT else ""
            cells.append(f"{c['ms']:.4f} (mat {_interval(c['materialize_over_tile'])}"
                         f"{versus_current}; {wrong}err {c['max_rel_error']:.1e})")
        lines.append(f"| {r['W']} | {r['T']} | {r['P']} | {r['plain_ms']:.4f} | "
                     f"{r['materialize_ms']:.4f} | " + " | ".join(cells) + " |")
    if skipped:
        lines += ["", f"{skipped} rows not run: over the {budget_s:.0f} s budget."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("fused_tiles.md"))
    parser.add_argument("--append", action="store_true", help="add the table to --output")
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--budget-s", type=float, default=60.0,
                        help="stop starting new rows after this many seconds")
    args = parser.parse_args(argv)
    from corp_kernels.triton_kernels.perturbed_linear import DECODE_TILE_CANDIDATES
    cuda = torch.cuda.is_available()
    if not cuda and os.environ.get("TRITON_INTERPRET") != "1":
        print("gpu_fused_tiles: no CUDA device; set TRITON_INTERPRET=1 to check the script under "
              "Triton's interpreter", file=sys.stderr)
        return 2
    device = "cuda" if cuda else "cpu"
    tiles = list(DECODE_TILE_CANDIDATES)
    if cuda:
        shapes, calls, dtype, repeats = SHAPES, CALLS, torch.bfloat16, args.repeats
        name = torch.cuda.get_device_name()
    else:  # the interpreter: one tiny shape, a check of the script only
        shapes, calls, dtype, repeats = [(8, 64)], [(1, 1), (2, 2)], torch.float32, 3
        name = "CPU (Triton interpreter, not a measurement)"
    previous = args.output.read_text() + "\n" if args.append and args.output.exists() else ""
    start, rows, skipped = time.time(), [], 0
    for n_out, n_in in shapes:
        w = (torch.randn(n_out, n_in, device=device) / n_in ** 0.5).to(dtype)
        for tokens, members in calls:
            if time.time() - start > args.budget_s:
                skipped += 1
                continue
            rows.append(measure_call(w, tokens, members, tiles, device, repeats))
            print(f"  {rows[-1]['W']} T={tokens} P={members}: " + ", ".join(
                f"{t}: {c['ms']:.4f} ms" for t, c in rows[-1]["tiles"].items()), flush=True)
            write_atomic(str(args.output), previous + render(rows, tiles, name, dtype, repeats,
                                                             cuda))
    write_atomic(str(args.output), previous + render(rows, tiles, name, dtype, repeats, cuda,
                                                     skipped, args.budget_s))
    wrong = [(r["W"], r["T"], r["P"], t) for r in rows for t, c in r["tiles"].items()
             if c["max_rel_error"] > ERROR_LIMIT]
    print(f"wrote {args.output}" + (f"; ERROR above {ERROR_LIMIT}: {wrong}" if wrong else ""))
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
