#!/usr/bin/env python
"""Compile every Triton kernel configuration the dispatcher launches for sm_90 and sm_80, without
a GPU, and read back registers, spills and shared memory.

    python scripts/aot_check.py [--arch 90,80] [--fp32] [--out benchmarks/results/aot]

For each variant (kernel, dtype, constexpr flags, tile, warps), triton.compile(ASTSource(...),
target=GPUTarget("cuda", cc, 32)) runs the whole pipeline down to a cubin with Triton's bundled
ptxas; `ptxas -v` on the same PTX gives registers, spill stores/loads and the stack frame. Writes
<out>.md (a table) and <out>.json. Exit status 1 on any compile error, or on any spill in an
fp16/bf16 configuration (fp32 rows are reported, never failed: fp32 on a GPU is the slow path).

The variants are built from the launchers' own constants (tile tables, block sizes), so a launcher
that changes its configurations changes what is checked. `--fp32` adds the fp32 perturbed_linear
variants, which take up to a minute each to compile on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def variants(include_fp32_linear: bool):
    """(kernel, config, dtype, jit function, signature, constexprs, options, dispatched):
    `dispatched` is False for configurations only a forced strategy reaches."""
    from corp_kernels.triton_kernels import (gaussian_noise, noise_gram, noise_sketch,
                                             perturbed_linear, philox, weighted_noise_sum)
    out = []
    for dt in ("fp32", "bf16", "fp16"):
        for add_src in (False, True):
            sig = {"out_ptr": f"*{dt}", "src_ptr": f"*{dt}", "n": "i32", "seed": "i64",
                   "counter_base": "i64", "rem": "i32", "alpha": "fp32", "ADD_SRC": "constexpr",
                   "BLOCK": "constexpr"}
            out.append(("noise_fill", f"add_src={int(add_src)}", dt,
                         gaussian_noise._noise_fill_kernel, sig,
                         {"ADD_SRC": add_src, "BLOCK": 512}, {}, True))

    sig = {"out_ptr": "*fp32", "n": "i32", "seeds_ptr": "*i64", "weights_ptr": "*fp32", "K": "i32",
           "counter_base": "i64", "rem": "i32", "BLOCK": "constexpr"}
    out.append(("weighted_noise_sum", "", "fp32", weighted_noise_sum._weighted_noise_sum_kernel,
                sig, {"BLOCK": 256}, {}, True))

    tiles = sorted({perturbed_linear._tiles(t) for t in (1, 16, 64, 65, 4096)})
    dispatched_tiles = perturbed_linear.dispatched_tiles()
    dtypes = ("bf16", "fp16") + (("fp32",) if include_fp32_linear else ())
    for dt in dtypes:
        for bt, bn, bk, warps in tiles:
            for aligned in (True, False):
                for one_member in (True, False):
                    for split in (False, True):
                        sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}",
                               "y_ptr": "*fp32" if split else f"*{dt}", "seeds_ptr": "*i64",
                               "sigmas_ptr": "*fp32", "seed0": "i64", "sigma0": "fp32",
                               "P": "i32", "T": "i32", "N": "i32", "K": "i32",
                               "k_per_split": "i32", "counter_base": "i64", "rem": "i32",
                               "ONE_MEMBER": "constexpr", "SPLIT": "constexpr",
                               "HAS_BIAS": "constexpr", "ALIGNED": "constexpr",
                               "LOW_PRECISION_DOT": "constexpr", "BLOCK_T": "constexpr",
                               "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
                        const = {"ONE_MEMBER": one_member, "SPLIT": split, "HAS_BIAS": not split,
                                 "ALIGNED": aligned, "LOW_PRECISION_DOT": dt != "fp32",
                                 "BLOCK_T": bt, "BLOCK_N": bn, "BLOCK_K": bk}
                        label = (f"tile={bt}x{bn}x{bk} aligned={int(aligned)} "
                                 f"one_member={int(one_member)} split={int(split)}")
                        # choose_strategy sends only aligned calls of few tokens to fused.
                        dispatched = aligned and (bt, bn, bk, warps) in dispatched_tiles
                        out.append(("perturbed_linear", label, dt,
                                    perturbed_linear._perturbed_linear_kernel, sig, const,
                                    {"num_warps": warps}, dispatched))

    sig = {"out_ptr": "*fp32", "seeds_ptr": "*i64", "K": "i32", "n": "i32", "counter_base": "i64",
           "rem": "i32", "n_chunks": "i32", "SPLITS": "constexpr", "ONE_BLOCK": "constexpr",
           "BLOCK_S": "constexpr", "BLOCK_C": "constexpr"}
    for block_s, one_block in ((16, True), (32, True), (64, True), (64, False)):
        block_c = 32 if one_block else 16
        out.append(("noise_gram", f"seeds_block={block_s} one_block={int(one_block)}", "fp32",
                    noise_gram._noise_gram_kernel, sig,
                    {"SPLITS": 528, "ONE_BLOCK": one_block, "BLOCK_S": block_s,
                     "BLOCK_C": block_c}, {"num_warps": 8 if block_s == 64 else 4}, True))

    for side, fn, tm in (("right", noise_sketch._sketch_right_kernel, "omega_ptr"),
                         ("left", noise_sketch._sketch_left_kernel, "psi_ptr")):
        for block_r in (16, 64):
            for aligned in (True, False):
                sig = {"out_ptr": "*fp32", tm: "*fp32", "seeds_ptr": "*i64",
                       "weights_ptr": "*fp32", "K": "i32", "m": "i32", "n": "i32", "r": "i32",
                       "counter_base": "i64", "rem": "i32", "splits": "i32",
                       "ALIGNED": "constexpr",
                       "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_R": "constexpr"}
                out.append((f"noise_sketch_{side}", f"R={block_r} aligned={int(aligned)}",
                            "fp32", fn, sig, {"ALIGNED": aligned, "BLOCK_M": 32, "BLOCK_N": 32,
                                              "BLOCK_R": block_r}, {}, True))

    sig = {"counters_ptr": "*i64", "keys_ptr": "*i64", "out_ptr": "*i64", "n": "i32",
           "BLOCK": "constexpr"}
    out.append(("philox", "", "u32", philox._philox_kernel, sig, {"BLOCK": 64}, {}, True))
    return out


def ptxas_usage(ptxas: str, ptx: str, arch: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "kernel.ptx")
        Path(src).write_text(ptx)
        result = subprocess.run([ptxas, "-v", f"--gpu-name={arch}", "-O3", src, "-o",
                                 os.path.join(tmp, "kernel.cubin")], capture_output=True,
                                text=True)
    log = result.stdout + result.stderr

    def number(pattern):
        match = re.search(pattern, log)
        return int(match.group(1)) if match else None
    if result.returncode:
        raise RuntimeError(f"ptxas failed: {log[-500:]}")
    return {"regs": number(r"Used (\d+) registers"),
            "spill_stores": number(r"(\d+) bytes spill stores"),
            "spill_loads": number(r"(\d+) bytes spill loads"),
            "stack": number(r"(\d+) bytes stack frame")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="90,80", help="compute capabilities, comma-separated")
    parser.add_argument("--fp32", action="store_true", help="also the fp32 perturbed_linear "
                                                            "variants (slow to compile)")
    parser.add_argument("--out", default=None,
                        help="write <out>.md and <out>.json (default benchmarks/results/aot; "
                             "with --filter or --dispatched-only nothing is written unless --out "
                             "is given: a partial table must not replace the committed one)")
    parser.add_argument("--filter", default=None, help="only kernels whose name contains this")
    parser.add_argument("--merge", action="store_true",
                        help="with --filter: replace only the filtered kernels' rows of the "
                             "table at --out (default benchmarks/results/aot), keep the rest")
    parser.add_argument("--dispatched-only", action="store_true",
                        help="skip configurations only a forced strategy launches (CI)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile")

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    todo = [v for v in variants(args.fp32) if (not args.filter or args.filter in v[0])
            and (v[7] or not args.dispatched_only)]
    archs = [int(a) for a in args.arch.split(",")]
    print(f"triton {triton.__version__}: {len(todo)} variants x {len(archs)} archs", flush=True)
    rows, failures, spills = [], 0, 0
    for cc in archs:
        target = GPUTarget("cuda", cc, 32)
        ptxas = get_ptxas(cc).path if "arch" in get_ptxas.__code__.co_varnames else get_ptxas().path
        for kernel, config, dtype, fn, sig, const, options, dispatched in todo:
            # Pointers 16-byte aligned, as the JIT specializes torch's allocations.
            attrs = {(i,): [["tt.divisibility", 16]] for i, v in enumerate(sig.values())
                     if v.startswith("*")}
            row = {"arch": f"sm_{cc}", "kernel": kernel, "config": config, "dtype": dtype,
                   "dispatched": dispatched}
            start = time.time()
            try:
                compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const,
                                                    attrs=attrs), target=target, options=options)
                ptx = compiled.asm["ptx"]
                arch = re.search(r"\.target\s+(\S+)", ptx).group(1)
                row.update(ok=True, num_warps=compiled.metadata.num_warps,
                           shared=compiled.metadata.shared, wgmma="wgmma" in ptx,
                           mma="mma.sync" in ptx, **ptxas_usage(ptxas, ptx, arch))
                spilled = (row["spill_stores"] or 0) + (row["spill_loads"] or 0) > 0
                row["fails"] = spilled and dtype in ("bf16", "fp16") and dispatched
                spills += row["fails"]
            except Exception as exc:  # noqa: BLE001 - report every failure, keep going
                failures += 1
                row.update(ok=False, fails=True, spill_stores=None, error=f"{type(exc).__name__}: {exc}"[:1000])
            row["seconds"] = round(time.time() - start, 1)
            rows.append(row)
            print(f"{row['arch']} {kernel:18s} {dtype:4s} {config:48s} "
                  + (f"regs={row['regs']} spill={row['spill_stores']}/{row['spill_loads']} "
                     f"stack={row['stack']} smem={row['shared']} warps={row['num_warps']} "
                     f"wgmma={int(row['wgmma'])} mma={int(row['mma'])}"
                     if row["ok"] else f"FAILED {row['error'][:300]}")
                  + f" ({row['seconds']} s)", flush=True)
    partial = bool(args.filter or args.dispatched_only)
    out, wrote = Path(args.out or ROOT / "benchmarks" / "results" / "aot"), ""
    if args.merge:
        if not args.filter or args.dispatched_only:
            parser.error("--merge needs --filter and a full (not --dispatched-only) run")
        table = out.with_suffix(".json")
        rows, partial = merge_rows(json.loads(table.read_text())["rows"], rows, args.filter), False
    if args.out or not partial:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"triton": triton.__version__,
                                                        "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(render(rows, triton.__version__))
        wrote = f"; wrote {out.with_suffix('.md')}"
    print(f"{len(rows) - failures}/{len(rows)} compiled; {spills} dispatched fp16/bf16 variants "
          f"spill{wrote}")
    return 1 if failures or spills else 0


def merge_rows(old: list[dict], new: list[dict], kernel_filter: str) -> list[dict]:
    """The committed table `old` with the rows of kernels matching `kernel_filter` replaced by
    `new`, each arch's new rows where its old ones were (after the arch's rows if it had none)."""
    merged, placed = [], set()
    for r in old:
        if kernel_filter not in r["kernel"]:
            merged.append(r)
        elif r["arch"] not in placed:
            placed.add(r["arch"])
            merged += [x for x in new if x["arch"] == r["arch"]]
    return merged + [x for x in new if x["arch"] not in placed]


def render(rows: list[dict], version: str) -> str:
    lines = [f"# Triton kernels compiled ahead of time (triton {version}, no GPU)", "",
             "Every configuration the launchers use; `scripts/aot_check.py` writes this table and "
             "fails CI on a compile error or on a spill in an fp16/bf16 configuration the dispatcher "
             "launches. spill = bytes of spill stores/loads per thread (ptxas -v); the stack also "
             "holds the precise sin/cos range-reduction table. dispatched = no: only "
             "CORP_KERNELS_LINEAR_STRATEGY=fused reaches it (unaligned or many-token fused tiles "
             "go to the chunked strategy).", "",
             "| arch | kernel | dtype | config | dispatched | regs | spill st/ld | stack | smem | "
             "warps | tensor cores | verdict |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['arch']} | {r['kernel']} | {r['dtype']} | {r['config']} | "
                         f"{'yes' if r['dispatched'] else 'no'} | | | | | | | "
                         f"FAILED: {r['error'][:120]} |")
            continue
        cores = "wgmma" if r["wgmma"] else "mma" if r["mma"] else "-"
        spilled = (r["spill_stores"] or 0) + (r["spill_loads"] or 0) > 0
        verdict = "FAIL: spills" if r["fails"] else "spills (not failed)" if spilled else "ok"
        lines.append(f"| {r['arch']} | {r['kernel']} | {r['dtype']} | {r['config']} | "
                     f"{'yes' if r['dispatched'] else 'no'} | {r['regs']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['shared']} | "
                     f"{r['num_warps']} | {cores} | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
