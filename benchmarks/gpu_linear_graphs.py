"""Where the time of perturbed_linear goes on a GPU: eager calls vs CUDA-graph replays.

    python -m benchmarks.gpu_linear_graphs --out linear_graphs.json

Eager timings include the host's work per call (argument checks, op dispatch, Triton's launcher);
a CUDA-graph replay of the same call runs only its kernels. Side by side they say whether a path is
bound by the GPU or by the host. Both strategies of perturbed_linear can be captured (seeds and
sigmas travel as kernel arguments, buffers come from the graph's pool).
"""

from __future__ import annotations

import argparse
import json
import sys

import torch
import torch.nn.functional as F

from .gpu_microbench import bench_ms as _bench_ms
from .gpu_microbench import materialize_then_linear, with_strategy


def bench_ms(fn) -> float:
    return _bench_ms(fn, rep_ms=40)


def graph_of(fn):
    """fn captured in a CUDA graph (after a warm-up call outside it); returns graph.replay."""
    fn()
    torch.cuda.synchronize()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_linear_graphs: no CUDA device here", file=sys.stderr)
        return 2
    import corp_kernels as ck
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    rows, errors = [], []
    for n_out, n_in in ((896, 896), (4864, 896), (4096, 4096)):
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) / n_in ** 0.5
        for t in (1, 16, 64, 512, 2048):
            x = torch.randn(t, n_in, device="cuda", dtype=torch.bfloat16)
            fns = {
                "fused": with_strategy("fused", lambda: ck.perturbed_linear(x, w, None, 11, 1e-3)),
                "chunked": with_strategy("chunked",
                                         lambda: ck.perturbed_linear(x, w, None, 11, 1e-3)),
                # The launcher alone, without the public op's checks and dispatch.
                "fused_launcher": lambda: tpl.perturbed_linear(x, w, None, 11, 1e-3, 0, "fused"),
                "materialize": lambda: materialize_then_linear(x, w, 11, 1e-3),
                "plain": lambda: F.linear(x, w),
            }
            row = {"N": n_out, "K": n_in, "T": t}
            for name, fn in fns.items():
                try:
                    row[f"{name}_eager_ms"] = bench_ms(fn)
                    row[f"{name}_graph_ms"] = bench_ms(graph_of(fn))
                except Exception as exc:  # noqa: BLE001 - record it, keep going
                    errors.append(f"{n_out}x{n_in} T={t} {name}: {type(exc).__name__}: "
                                  f"{str(exc)[:300]}")
            rows.append(row)
            print(" ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in row.items()), flush=True)
    # One chunked call under the profiler: host and device time per operator.
    w = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(1, 4096, device="cuda", dtype=torch.bfloat16)
    chunked = with_strategy("chunked", lambda: ck.perturbed_linear(x, w, None, 11, 1e-3))
    for _ in range(5):
        chunked()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                            torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            chunked()
        torch.cuda.synchronize()
    table = prof.key_averages().table(sort_by="cpu_time_total", row_limit=25)
    print(table)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "rows": rows, "errors": errors,
                   "profile_chunked_4096x4096_T1": table}, f, indent=1)
    print(f"errors: {errors or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
