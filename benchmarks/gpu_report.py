"""Render the files scripts/gpu_check.sh wrote into one markdown report.

    python -m benchmarks.gpu_report GPU_OUT_DIR benchmarks/results/gpu-<device>.md

Reads env.txt, tests.log, microbench.json, search.json, suite.json and linear_graphs.json (each
optional) and writes
tables people can read: what ran, what passed, every timing with the ratio that matters.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(row.get(c, "")) for c in columns) + " |")
    return lines + [""]


def render(out_dir: Path) -> str:
    lines = ["# corp-kernels on a GPU: scripts/gpu_check.sh", ""]
    env = out_dir / "env.txt"
    if env.exists():
        lines += ["## Machine", "", "```", env.read_text().strip(), "```", ""]
    tests = out_dir / "tests.log"
    if tests.exists():
        summary = [ln for ln in tests.read_text().splitlines() if " passed" in ln or " failed" in ln]
        lines += ["## Kernel tests on CUDA", "", f"`{summary[-1] if summary else 'no summary'}`",
                  "(tests/test_philox, noise_ops, linear, noise_gram, sketch, validation, "
                  "integration; Triton compiled for the GPU, the CUDA extension, torch on CUDA)", ""]
    micro = out_dir / "microbench.json"
    if micro.exists():
        data = json.loads(micro.read_text())
        s = data["sections"]
        if "noise_generation" in s:
            lines += ["## Noise generation (n normals; of_ceiling = Triton Philox+Box-Muller "
                      "kernel that stores nothing / this)", ""]
            lines += _table(s["noise_generation"], ["what", "dtype", "n", "ms", "Gnormals_s",
                                                    "of_ceiling"])
        if "weighted_noise_sum" in s:
            lines += ["## weighted_noise_sum", ""]
            lines += _table(s["weighted_noise_sum"], ["backend", "n", "K", "ms", "Gnormals_s"])
        if "perturbed_linear" in s:
            lines += ["## perturbed_linear, bf16 (fused_vs_materialize > 1: the default path is "
                      "faster than materializing W + sigma*eps, then cuBLAS)", ""]
            cols = [c for c in ("N", "K", "T", "default_ms", "fused_ms", "chunked_ms",
                                "materialize_ms", "plain_ms", "fused_vs_materialize",
                                "default_vs_materialize", "default_over_plain", "fused_over_plain")
                    if any(c in r for r in s["perturbed_linear"])]
            lines += _table(s["perturbed_linear"], cols)
        if "population_linear" in s:
            lines += ["## population_linear, bf16, against P sequential materialized members", ""]
            cols = [c for c in ("N", "K", "P", "T", "default_ms", "fused_ms", "chunked_ms",
                                "sequential_materialized_ms", "speedup_vs_sequential",
                                "plain_shared_W_ms") if any(c in r for r in s["population_linear"])]
            lines += _table(s["population_linear"], cols)
        if "noise_gram_and_sketch" in s:
            lines += ["## noise_gram and noise_sketch", ""]
            lines += _table(s["noise_gram_and_sketch"]["gram"], ["K", "numel", "ms",
                                                                 "useful_Gnormals_s"])
            lines += _table(s["noise_gram_and_sketch"]["sketch"], ["K", "r", "shape", "side", "ms",
                                                                   "useful_Gnormals_s"])
        if "cross_backend_agreement" in s:
            lines += ["## Agreement with the CPU reference (2^22 normals)", "", "```",
                      json.dumps(s["cross_backend_agreement"], indent=1), "```", ""]
        if "opcheck_compile_graphs" in s:
            lines += ["## opcheck, torch.compile, CUDA graphs", ""]
            lines += [f"- {k}: {v}" for k, v in s["opcheck_compile_graphs"].items()] + [""]
        if "jit_kernel_resources" in s:
            lines += ["## Registers and local memory of every kernel the JIT compiled "
                      "(n_spills = local bytes / 4, as Triton reports it)", ""]
            lines += _table(s["jit_kernel_resources"], ["kernel", "spec", "n_regs", "n_spills",
                                                        "shared", "num_warps", "num_stages"])
        if data.get("errors"):
            lines += ["## Failed sections", ""]
            lines += [f"- {k}: `{v.splitlines()[0]}`" for k, v in data["errors"].items()] + [""]
    search = out_dir / "search.json"
    if search.exists():
        d = json.loads(search.read_text())
        lines += [f"## Population search, end to end: {d['size']} Llama ({d['parameters'] / 1e9:.3f}B "
                  f"parameters, {d['perturbed'] / 1e9:.3f}B perturbed), {d['dtype']}, "
                  f"{d['prompts']} prompts x {d['new_tokens']} new tokens per member", ""]
        lines += _table(d["rows"], ["mode", "members", "s_per_member", "members_per_s",
                                    "x_user_loop"])
        lines += ["user_loop: copy of the weights kept, sigma * torch.randn added per member, "
                  "generate, weights copied back.", ""]
    graphs = out_dir / "linear_graphs.json"
    if graphs.exists():
        d = json.loads(graphs.read_text())
        lines += ["## perturbed_linear: eager call vs CUDA-graph replay (GPU time only), bf16, ms",
                  "", "eager includes the host's work per call; graph replays only the kernels. "
                  "fused_launcher: the Triton launcher without the public op's checks.", ""]
        cols = ["N", "K", "T"] + [f"{name}_{kind}_ms" for name in
                                  ("fused", "chunked", "materialize", "plain", "fused_launcher")
                                  for kind in ("eager", "graph")]
        lines += _table(d["rows"], cols)
        if d.get("errors"):
            lines += [f"- error: {e}" for e in d["errors"]] + [""]
        lines += ["Profile of 10 chunked calls, 4096 x 4096, T = 1:", "", "```",
                  d["profile_chunked_4096x4096_T1"].strip(), "```", ""]
    rule = out_dir / "linear_rule.md"
    if rule.exists():  # bench_linear_rule's table ("# ..."), then gpu_fused_tiles' ("## ...")
        text = rule.read_text().strip()
        lines += [("#" + text) if text.startswith("# ") else text, ""]
    suite = out_dir / "suite.json"
    if suite.exists():
        from .results_to_markdown import render as render_suite
        lines += ["## Benchmark suite (`python -m benchmarks.run --quick`)", ""]
        lines += render_suite(suite).splitlines()[1:]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    source, target = Path(sys.argv[1]), Path(sys.argv[2])
    target.write_text(render(source))
    print(f"wrote {target}")
