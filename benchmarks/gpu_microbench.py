"""GPU micro-benchmarks and cross-backend checks of corp_kernels, written to one JSON file.

    python -m benchmarks.gpu_microbench --out microbench.json [--quick]

What benchmarks/run.py does not measure:
- the generator against its own ceiling: a Triton kernel that only runs Philox4x32-10 + Box-Muller
  (tl.randn4x) and writes nothing, next to gaussian_noise (Triton and CUDA) and torch.randn;
- perturbed_linear at decode and prefill token counts against F.linear (no noise) and against
  "materialize W + sigma*eps, then cuBLAS", and population_linear against P sequential members;
- the reductions (weighted_noise_sum, noise_gram, noise_sketch) in normals/s;
- Triton vs CUDA vs C++ agreement in float32 ulps; opcheck, torch.compile and CUDA-graph capture of
  the ops on CUDA;
- registers / spills / shared memory of every Triton kernel the JIT compiled in this process.

Every section is guarded: a failure is recorded under "errors" and the others still run. Timings are
medians of triton.testing.do_bench (L2 flushed between runs), all in one process, so ratios compare
like with like.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
import traceback

import torch
import torch.nn.functional as F

RESULTS: dict = {"sections": {}, "errors": {}, "seconds": {}}


def section(name):
    def wrap(fn):
        def run(*args, **kwargs):
            start = time.time()
            try:
                RESULTS["sections"][name] = fn(*args, **kwargs)
                status = "ok"
            except Exception as exc:  # noqa: BLE001 - record it, keep going
                RESULTS["errors"][name] = f"{type(exc).__name__}: {exc}\n" \
                                          f"{traceback.format_exc()[-2500:]}"
                status = "ERROR " + RESULTS["errors"][name].splitlines()[0]
            RESULTS["seconds"][name] = round(time.time() - start, 1)
            print(f"[{time.time() - start:6.1f}s] {name}: {status}", flush=True)
        return run
    return wrap


def bench_ms(fn, rep_ms: int = 50) -> float:
    """Median milliseconds per call of fn."""
    import triton.testing
    return triton.testing.do_bench(fn, warmup=10, rep=rep_ms, return_mode="median")


def _ceiling_kernel():
    """Philox4x32-10 + Box-Muller laid out as gaussian_noise's kernel, with the store masked by a
    condition no normal meets (|z| > 1e30): the generator's cost without the memory traffic. The
    compiler cannot prove the mask false, so nothing is optimised away. (The first version summed
    16 rounds per program and ran slower than gaussian_noise itself: not a ceiling.)"""
    import triton
    import triton.language as tl

    @triton.jit
    def philox_ceiling(out_ptr, seed, BLOCK: tl.constexpr):
        first = tl.program_id(0).to(tl.int64) * BLOCK
        n0, n1, n2, n3 = tl.randn4x(seed, first + tl.arange(0, BLOCK))
        z = tl.interleave(tl.interleave(n0, n2), tl.interleave(n1, n3))
        index = 4 * first + tl.arange(0, 4 * BLOCK)
        tl.store(out_ptr + index, z, mask=tl.abs(z) > 1e30)
    return philox_ceiling


@section("env")
def env():
    import triton

    import corp_kernels as ck
    p = torch.cuda.get_device_properties(0)
    return {"python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "triton": triton.__version__, "gpu": p.name,
            "sms": p.multi_processor_count, "cc": f"{p.major}.{p.minor}",
            "mem_gib": round(p.total_memory / 2**30, 1),
            "backends": {n: [s.available, s.reason] for n, s in ck.backends().items()}}


@section("noise_generation")
def noise_generation(quick: bool):
    import triton

    import corp_kernels as ck
    n = 1 << (26 if quick else 28)
    kernel = _ceiling_kernel()
    block = 512
    sink = torch.empty(n, device="cuda")
    ceiling_ms = bench_ms(lambda: kernel[(triton.cdiv(n, 4 * block),)](sink, 7, BLOCK=block))
    rows = [{"what": "philox+box-muller ceiling (nothing stored)", "n": n, "ms": ceiling_ms,
             "Gnormals_s": n / ceiling_ms / 1e6}]
    for dtype in (torch.float32, torch.bfloat16):
        for backend in ("triton", "cuda"):
            if not ck.backends()[backend].available:
                continue
            ms = bench_ms(lambda: ck.gaussian_noise((n,), 7, dtype=dtype, device="cuda",
                                                    backend=backend))
            rows.append({"what": f"gaussian_noise {backend}", "dtype": str(dtype), "n": n,
                         "ms": ms, "Gnormals_s": n / ms / 1e6, "of_ceiling": ceiling_ms / ms,
                         "GBps_written": n * dtype.itemsize / ms / 1e6})
        ms = bench_ms(lambda: torch.randn(n, dtype=dtype, device="cuda"))
        rows.append({"what": "torch.randn (cuRAND-style Philox, fast math)", "dtype": str(dtype),
                     "n": n, "ms": ms, "Gnormals_s": n / ms / 1e6, "of_ceiling": ceiling_ms / ms})
        t = torch.zeros(n, dtype=dtype, device="cuda")
        ms = bench_ms(lambda: ck.add_noise_(t, 3, 0.01))
        rows.append({"what": "add_noise_ (default backend)", "dtype": str(dtype), "n": n,
                     "ms": ms, "Gnormals_s": n / ms / 1e6, "of_ceiling": ceiling_ms / ms})
        del t
    return rows


@section("weighted_noise_sum")
def weighted_noise_sum(quick: bool):
    import corp_kernels as ck
    rows = []
    n = 1 << (22 if quick else 24)
    for k in (1, 8, 64):
        seeds, weights = list(range(1, k + 1)), [1.0 / k] * k
        for backend in ("triton", "cuda"):
            if ck.backends()[backend].available:
                ms = bench_ms(lambda: ck.weighted_noise_sum((n,), seeds, weights, device="cuda",
                                                            backend=backend))
                rows.append({"backend": backend, "n": n, "K": k, "ms": ms,
                             "Gnormals_s": k * n / ms / 1e6})
    return rows


def materialize_then_linear(x, w, seed, sigma):
    """What a user would write: W + sigma * eps in a fresh tensor, then cuBLAS."""
    import corp_kernels as ck
    w_eff = w.clone()
    ck.add_noise_(w_eff, seed, sigma)
    return F.linear(x, w_eff)


def with_strategy(strategy, fn):
    """fn run under CORP_KERNELS_LINEAR_STRATEGY=strategy (None: the dispatcher's rule)."""
    from corp_kernels._chunked import strategy_forced

    def run():
        with strategy_forced(strategy):
            return fn()
    return run


def _strategies(fn) -> dict:
    """Milliseconds of fn under the dispatcher's rule and under each strategy forced, and which
    forced strategy was faster."""
    times = {"default_ms": bench_ms(with_strategy(None, fn)),
             "fused_ms": bench_ms(with_strategy("fused", fn)),
             "chunked_ms": bench_ms(with_strategy("chunked", fn))}
    times["best"] = "fused" if times["fused_ms"] < times["chunked_ms"] else "chunked"
    return times


@section("perturbed_linear")
def perturbed_linear(quick: bool):
    import corp_kernels as ck
    rows = []
    # 896: SmolLM2/Qwen-0.5B width; 4864x896 its MLP; 4096x4096 and 11008x4096: a 7B model's.
    shapes = [(896, 896), (4864, 896), (4096, 4096)] if quick else \
        [(896, 896), (4864, 896), (4096, 4096), (11008, 4096)]
    tokens = [1, 4, 16, 32, 64, 128, 512, 2048] if quick else \
        [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
    for n_out, n_in in shapes:
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) / n_in ** 0.5
        for t in tokens:
            x = torch.randn(t, n_in, device="cuda", dtype=torch.bfloat16)
            row = {"N": n_out, "K": n_in, "T": t,
                   **_strategies(lambda: ck.perturbed_linear(x, w, None, 11, 1e-3)),
                   "materialize_ms": bench_ms(lambda: materialize_then_linear(x, w, 11, 1e-3)),
                   "plain_ms": bench_ms(lambda: F.linear(x, w))}
            row["default_vs_materialize"] = row["materialize_ms"] / row["default_ms"]
            row["fused_vs_materialize"] = row["materialize_ms"] / row["fused_ms"]
            row["default_over_plain"] = row["default_ms"] / row["plain_ms"]
            rows.append(row)
    return rows


@section("population_linear")
def population_linear(quick: bool):
    import corp_kernels as ck
    rows = []
    for n_out, n_in in [(896, 896), (4096, 4096)]:
        w = torch.randn(n_out, n_in, device="cuda", dtype=torch.bfloat16) / n_in ** 0.5
        for p in ((4, 16) if quick else (4, 16, 32)):
            for t in (1, 16, 64, 256):
                x = torch.randn(p, t, n_in, device="cuda", dtype=torch.bfloat16)
                seeds, sigmas = list(range(p)), [1e-3] * p

                def sequential():
                    return [materialize_then_linear(x[i], w, seeds[i], 1e-3) for i in range(p)]
                row = {"N": n_out, "K": n_in, "P": p, "T": t,
                       **_strategies(lambda: ck.population_linear(x, w, None, seeds, sigmas)),
                       "sequential_materialized_ms": bench_ms(sequential),
                       "plain_shared_W_ms": bench_ms(lambda: F.linear(x.reshape(p * t, n_in), w))}
                row["speedup_vs_sequential"] = row["sequential_materialized_ms"] / row["default_ms"]
                rows.append(row)
    return rows


@section("noise_gram_and_sketch")
def gram_and_sketch(quick: bool):
    import corp_kernels as ck
    out = {"gram": [], "sketch": []}
    numel = 1 << 24
    for k in (8, 64, 200):
        seeds = list(range(1, k + 1))
        ms = bench_ms(lambda: ck.noise_gram((numel,), seeds, device="cuda"))
        out["gram"].append({"K": k, "numel": numel, "ms": ms,
                            "useful_Gnormals_s": k * numel / ms / 1e6})
    m = n = 2048 if quick else 4096
    for k, r in ((8, 16), (32, 64)):
        seeds, weights = list(range(1, k + 1)), [0.1] * k
        for side in ("right", "left"):
            tm = torch.randn((n, r) if side == "right" else (r, m), device="cuda")
            ms = bench_ms(lambda: ck.noise_sketch((m, n), seeds, weights, tm, side=side))
            out["sketch"].append({"K": k, "r": r, "shape": [m, n], "side": side, "ms": ms,
                                  "useful_Gnormals_s": k * m * n / ms / 1e6})
    return out


@section("cross_backend_agreement")
def agreement():
    import corp_kernels as ck
    n, res = 1 << 22, {}
    ref_backend = "cpp" if ck.backends()["cpp"].available else "torch"
    ref = ck.gaussian_noise((n,), 99, 13, backend=ref_backend)
    res["reference"] = ref_backend
    for backend in ("triton", "cuda", "torch"):
        if not ck.backends()[backend].available:
            continue
        got = ck.gaussian_noise((n,), 99, 13, device="cuda", backend=backend).cpu()
        # ulps between floats of one sign: their int32 bit patterns differ by that many.
        ulp = (got.view(torch.int32).long() - ref.view(torch.int32).long()).abs()
        res[f"{backend}_cuda"] = {"max_abs": (got - ref).abs().max().item(),
                                  "max_ulp": ulp.max().item(),
                                  "frac_bit_equal": (ulp == 0).float().mean().item()}
    counters = torch.randint(0, 2**32, (4096, 4), dtype=torch.int64)
    keys = torch.randint(0, 2**32, (4096, 2), dtype=torch.int64)
    cpu_words = ck.philox4x32_10(counters, keys, backend=ref_backend)
    gpu_words = ck.philox4x32_10(counters.cuda(), keys.cuda(), backend="triton").cpu()
    res["philox_words_bit_equal_triton_vs_" + ref_backend] = bool(torch.equal(cpu_words, gpu_words))
    return res


@section("opcheck_compile_graphs")
def opcheck_compile_graphs():
    import corp_kernels as ck
    dev = torch.device("cuda")
    res = {}
    x, w, b = (torch.randn(3, 64, device=dev), torch.randn(32, 64, device=dev),
               torch.randn(32, device=dev))
    cases = {
        "gaussian_noise": (torch.ops.corp_kernels.gaussian_noise, ([3, 5], 7, 2, torch.float32,
                                                                   dev, "triton")),
        "add_noise_": (torch.ops.corp_kernels.add_noise_, (torch.zeros(4, 6, device=dev), 7, 0.5,
                                                           3, "triton")),
        "perturbed_linear": (torch.ops.corp_kernels.perturbed_linear, (x, w, b, 3, 0.1, 0,
                                                                       "triton")),
    }
    for name, (op, args) in cases.items():
        try:
            torch.library.opcheck(op, args)
            res[f"opcheck_{name}"] = "ok"
        except Exception as exc:  # noqa: BLE001
            res[f"opcheck_{name}"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    def layer(x, w, b):
        h = ck.perturbed_linear(x, w, b, 11, 0.05)
        return torch.relu(h) + ck.gaussian_noise(h.shape, 5, device=h.device)

    try:
        compiled = torch.compile(layer, fullgraph=True)
        torch.testing.assert_close(compiled(x, w, b), layer(x, w, b))
        res["torch_compile_fullgraph"] = "ok"
    except Exception as exc:  # noqa: BLE001
        res["torch_compile_fullgraph"] = f"{type(exc).__name__}: {str(exc)[:300]}"

    # CUDA graph capture of one perturbed decode-sized call: fails while a launcher copies its
    # seeds/sigmas from the host on every call.
    try:
        xs = torch.randn(1, 64, device=dev, dtype=torch.bfloat16)
        ws = torch.randn(32, 64, device=dev, dtype=torch.bfloat16)
        ck.perturbed_linear(xs, ws, None, 3, 0.1)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            ys = ck.perturbed_linear(xs, ws, None, 3, 0.1)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(ys, ck.perturbed_linear(xs, ws, None, 3, 0.1))
        res["cuda_graph_perturbed_linear"] = "ok"
    except Exception as exc:  # noqa: BLE001
        res["cuda_graph_perturbed_linear"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    try:  # a population decode step: seeds/sigmas come from the device cache after one call
        xp = torch.randn(4, 2, 64, device=dev, dtype=torch.bfloat16)
        wp = torch.randn(96, 64, device=dev, dtype=torch.bfloat16)
        seeds, sigmas = [5, 6, 7, 8], [0.1, 0.2, 0.3, 0.4]
        ck.population_linear(xp, wp, None, seeds, sigmas)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            yp = ck.population_linear(xp, wp, None, seeds, sigmas)
        graph.replay()
        torch.cuda.synchronize()
        torch.testing.assert_close(yp, ck.population_linear(xp, wp, None, seeds, sigmas))
        res["cuda_graph_population_linear"] = "ok"
    except Exception as exc:  # noqa: BLE001
        res["cuda_graph_population_linear"] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return res


def describe_specialization(arg_names: list[str], key: str) -> str:
    """The JIT's specialization key as `name=value` for constants and `name%16` for integers it
    compiled as multiples of 16 (pointers left out): which configuration a row of registers is,
    to set beside the AOT table's rows. Empty when the key does not parse."""
    import ast
    try:
        spec = ast.literal_eval(key[:key.index("]") + 1] if key.startswith("[(") else key)
    except (ValueError, SyntaxError):
        return ""
    if len(spec) != len(arg_names):
        return ""
    parts = []
    for name, (kind, value) in zip(arg_names, spec):
        if kind == "constexpr":
            parts.append(f"{name}={value}")
        elif not kind.startswith("*") and value == "D":
            parts.append(f"{name}%16")
    return " ".join(parts)


@section("jit_kernel_resources")
def kernel_resources():
    """n_regs / n_spills / shared memory of every specialization the JIT compiled here."""
    import importlib
    import pkgutil

    import triton

    import corp_kernels.triton_kernels as pkg
    rows = []
    for info in pkgutil.iter_modules(pkg.__path__):
        module = importlib.import_module(f"{pkg.__name__}.{info.name}")
        for obj in vars(module).values():
            if not isinstance(obj, triton.runtime.jit.JITFunction):
                continue
            for cache in getattr(obj, "device_caches", {}).values():
                for key, kernel in cache[0].items():
                    if hasattr(kernel, "_init_handles"):
                        kernel._init_handles()
                    rows.append({"kernel": obj.__name__, "key": str(key)[:400],
                                 "spec": describe_specialization(list(obj.arg_names), str(key)),
                                 "n_regs": getattr(kernel, "n_regs", None),
                                 "n_spills": getattr(kernel, "n_spills", None),
                                 "shared": kernel.metadata.shared,
                                 "num_warps": kernel.metadata.num_warps,
                                 "num_stages": kernel.metadata.num_stages})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--quick", action="store_true", help="fewer shapes (about a minute)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_microbench: no CUDA device here", file=sys.stderr)
        return 2
    env()
    noise_generation(args.quick)
    weighted_noise_sum(args.quick)
    perturbed_linear(args.quick)
    population_linear(args.quick)
    gram_and_sketch(args.quick)
    agreement()
    opcheck_compile_graphs()
    kernel_resources()
    with open(args.out, "w") as f:
        json.dump(RESULTS, f, indent=1, default=str)
    print(f"wrote {args.out}; failed sections: {list(RESULTS['errors']) or 'none'}")
    return 1 if RESULTS["errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
