"""The C++ backend's two noise generators, AVX2 and portable, side by side in one process.

The extension is built for baseline x86-64 and picks the AVX2 generator at run time where the CPU
has AVX2 (csrc/cpu/normals.h); CORP_KERNELS_CPU_ISA=portable forces the other. This measures what
the choice is worth for the ops that generate noise, alternating the two paths in each repeat so
that a noisy machine affects both alike, and checks that they give the same bits.

    .venv/bin/python -m benchmarks.bench_cpu_isa [--threads N] [--out benchmarks/results/cpu-isa-x86_64.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch

import corp_kernels as ck


def cases():
    n = 1 << 22
    bf16 = torch.zeros(n, dtype=torch.bfloat16)
    w = torch.randn(896, 896).to(torch.bfloat16)
    x1 = torch.randn(1, 896).to(torch.bfloat16)
    seeds, weights = list(range(8)), [0.125] * 8
    psi = torch.randn(40, 1024)
    return {
        "gaussian_noise fp32, 4M": (lambda: ck.gaussian_noise((n,), 7, backend="cpp"), n),
        "add_noise_ bf16, 4M": (lambda: ck.add_noise_(bf16, 7, 0.01, backend="cpp"), n),
        "perturbed_linear 896x896 bf16, 1 token": (
            lambda: ck.perturbed_linear(x1, w, None, 3, 0.01, backend="cpp"), 896 * 896),
        "weighted_noise_sum 1024x1024, K=8": (
            lambda: ck.weighted_noise_sum((1024, 1024), seeds, weights, backend="cpp"), 8 << 20),
        "noise_sketch left 1024x1024, K=8, r=40": (
            lambda: ck.noise_sketch((1024, 1024), seeds, weights, psi, side="left",
                                    backend="cpp"), 8 << 20),
        "noise_gram 1M, K=8": (lambda: ck.noise_gram((1 << 20,), seeds, backend="cpp"), 8 << 20),
    }


def measure(repeats: int) -> list[dict]:
    rows = []
    for name, (fn, normals) in cases().items():
        times = {"avx2": [], "portable": []}
        outputs = {}
        for _ in range(repeats):
            for isa in ("avx2", "portable"):
                torch.ops.corp_cpu.set_cpu_isa(isa)
                fn()  # warm: allocator, caches
                start = time.perf_counter()
                outputs[isa] = fn()
                times[isa].append(time.perf_counter() - start)
        torch.ops.corp_cpu.set_cpu_isa("auto")
        same = bool(torch.equal(outputs["avx2"].view(-1).view(torch.uint8),
                                outputs["portable"].view(-1).view(torch.uint8)))
        avx2, portable = statistics.median(times["avx2"]), statistics.median(times["portable"])
        rows.append({"op": name, "avx2_ms": avx2 * 1e3, "portable_ms": portable * 1e3,
                     "avx2_ns_per_normal": avx2 / normals * 1e9,
                     "portable_ns_per_normal": portable / normals * 1e9,
                     "speedup": portable / avx2, "bit_identical": same})
    return rows


def to_markdown(rows: list[dict], threads: int, repeats: int, note: str = "") -> str:
    lines = [f"# CPU noise generators: AVX2 vs portable ({platform.machine()}, {threads} threads)",
             "", "Reproduce: `.venv/bin/python -m benchmarks.bench_cpu_isa --threads "
             f"{threads}`. Median of {repeats} timed calls per path, the paths alternating."
             + (f" {note}" if note else ""),
             "", "| op | AVX2 (ms) | portable (ms) | AVX2 ns/normal | portable ns/normal | "
             "AVX2 speed-up | same bits |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['op']} | {r['avx2_ms']:.2f} | {r['portable_ms']:.2f} | "
                     f"{r['avx2_ns_per_normal']:.2f} | {r['portable_ns_per_normal']:.2f} | "
                     f"{r['speedup']:.2f}x | {'yes' if r['bit_identical'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", help="write the markdown table here (atomically)")
    parser.add_argument("--note", default="", help="a sentence on the conditions, for the table")
    args = parser.parse_args()
    if not ck.backends()["cpp"].available:
        raise SystemExit(f"the C++ backend is not available: {ck.backends()['cpp'].reason}")
    try:
        torch.ops.corp_cpu.set_cpu_isa("avx2")
    except RuntimeError as exc:
        raise SystemExit(f"only the portable generator can run here: {exc}") from None
    torch.set_num_threads(args.threads)
    table = to_markdown(measure(args.repeats), args.threads, args.repeats, args.note)
    print(table)
    if args.out:
        tmp = f"{args.out}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(table)
        os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
