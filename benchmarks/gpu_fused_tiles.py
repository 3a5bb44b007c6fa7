"""Fused decode tiles of perturbed_linear timed against each other on a GPU, in GPU time only.

    python -m benchmarks.gpu_fused_tiles [--output FILE.md] [--append] [--budget-s 60]

The fused kernel is bound by its noise generator, so the warps resident per SM, which hide its
latency, matter; registers decide them (benchmarks/results/aot-fused-tiles.md: 16 warps for the
64 x 64 x 64 tile measured on an H200, 40 for the 64 x 32 x 32 tile `_tiles` uses since, on sm_90).
Whether more resident warps make it faster can only be measured. For each weight shape, token count and member count,
every tile of perturbed_linear.DECODE_TILE_CANDIDATES runs forced, beside "materialize W +
sigma*eps, then cuBLAS" and plain F.linear. On CUDA each timed call is a CUDA graph replaying
REPLAYS calls, so the host's work (checks, dispatch, Triton's launcher) drops out; rounds are
interleaved in a shuffled order and each tile's ratio to materialize has a paired 95% interval.
Every tile's output is compared with materialize's (the same rounded W + sigma*eps; only the
order of the sums differs).

Without CUDA it runs one tiny shape eagerly under Triton's interpreter: a check of the script
itself, not a measurement.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import corp_kernels as ck

from ._measure import interleaved_times, paired_ratio, paired_ratio_interval

SIGMA = 1e-3
REPLAYS = 20
# (N, K) of a ~0.5B decoder (hidden 896: q/o, MLP up) and a 7B-sized square layer.
SHAPES = [(896, 896), (4864, 896), (4096, 4096)]
# (tokens per member, members): decode of one model, a short prompt, a population step.
CALLS = [(1, 1), (16, 1), (64, 1), (16, 16)]


def materialize(x, w, seed: int, sigma: float):
    """What a user would write: W + sigma * eps in a fresh tensor, then the vendor GEMM."""
    w_eff = w.clone()
    ck.add_noise_(w_eff, seed, sigma)
    return F.linear(x, w_eff)


def _repeated(fn, device: str):
    """A callable that runs fn REPLAYS times: one CUDA-graph replay on CUDA (captured after a
    warm-up call), plain calls elsewhere."""
    if device != "cuda":
        return fn
    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(REPLAYS):
            fn()
    return graph.replay


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

    def fused(tile):
        return lambda: tpl.population_linear(x, w, None, seeds, sigmas, 0, "fused", tiles=tile)

    def materialized():
        return torch.stack([materialize(x[p], w, int(seeds[p]), SIGMA) for p in range(members)])
    reference = materialized()
    errors = {tile: relative_error(fused(tile)(), reference) for tile in tiles}
    fns = {f"tile {tile}": _repeated(fused(tile), device) for tile in tiles}
    fns["materialize"] = _repeated(materialized, device)
    fns["plain"] = _repeated(lambda: F.linear(x, w), device)
    times = interleaved_times(fns, repeats, device)
    per_call = 1e3 / (REPLAYS if device == "cuda" else 1)
    row = {"W": f"{w.shape[0]}x{n_in}", "T": tokens, "P": members,
           "materialize_ms": sorted(times["materialize"])[repeats // 2] * per_call,
           "plain_ms": sorted(times["plain"])[repeats // 2] * per_call, "tiles": {}}
    for tile in tiles:
        name = f"tile {tile}"
        lo, hi = paired_ratio_interval(times["materialize"], times[name])
        ratio = paired_ratio(times["materialize"], times[name])
        row["tiles"][tile] = {"ms": sorted(times[name])[repeats // 2] * per_call,
                              "materialize_over_tile": (ratio, lo, hi),
                              "max_rel_error": errors[tile]}
    return row


def render(rows: list[dict], tiles, device_name: str, dtype: torch.dtype, repeats: int,
           graphs: bool) -> str:
    from corp_kernels.triton_kernels.perturbed_linear import _tiles
    timing = (f"in GPU time (CUDA-graph replays of {REPLAYS} calls" if graphs
              else "(eager calls")
    lines = [f"## Fused decode tiles on {device_name} ({str(dtype).removeprefix('torch.')}, "
             f"{time.strftime('%Y-%m-%d')})", "",
             f"`python -m benchmarks.gpu_fused_tiles`. ms per call {timing}, median of {repeats} "
             "interleaved rounds); in brackets "
             "materialize-then-cuBLAS / tile, median of per-round ratios [95% interval], > 1: the "
             "tile is faster. * marks the tile `_tiles` uses now. err: max |y - y_materialize| / "
             "rms(y_materialize).", "",
             "| W | T | P | plain ms | materialize ms | "
             + " | ".join(f"{'*' if t == _tiles(16) else ''}{t[0]}x{t[1]}x{t[2]} w{t[3]}"
                          for t in tiles) + " |",
             "|---|---:|---:|---:|---:|" + "---|" * len(tiles)]
    for r in rows:
        cells = []
        for tile in tiles:
            c = r["tiles"][tile]
            ratio, lo, hi = c["materialize_over_tile"]
            cells.append(f"{c['ms']:.4f} ({ratio:.2f} [{lo:.2f}, {hi:.2f}], "
                         f"err {c['max_rel_error']:.1e})")
        lines.append(f"| {r['W']} | {r['T']} | {r['P']} | {r['plain_ms']:.4f} | "
                     f"{r['materialize_ms']:.4f} | " + " | ".join(cells) + " |")
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
    text = render(rows, tiles, name, dtype, repeats, graphs=cuda)
    if skipped:
        text += f"\n{skipped} rows not run: over the {args.budget_s:.0f} s budget.\n"
    previous = args.output.read_text() + "\n" if args.append and args.output.exists() else ""
    tmp = args.output.with_suffix(args.output.suffix + ".tmp")
    tmp.write_text(previous + text)
    tmp.replace(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
