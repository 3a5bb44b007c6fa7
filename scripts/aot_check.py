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
that changes its configurations changes what is checked. Each is compiled twice, as Triton's JIT
specializes their integer arguments: for a 4099 x 4100 layer at an odd stream offset and for a
4096 x 4096 layer (sizes that are multiples of 16 compiled knowing so, T = 1 and P = 1 as
constants). A model's layers run the second, with very different registers. `--fp32` adds the
fp32 perturbed_linear variants, which take up to a minute each to compile on 2 cores.
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
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


class Variant(NamedTuple):
    """One compiled configuration. `dispatched` is False for configurations only a forced
    strategy reaches; `divisible` names the integer arguments the JIT would mark divisible by 16."""
    kernel: str
    config: str
    dtype: str
    fn: object
    sig: dict
    const: dict
    options: dict
    dispatched: bool
    divisible: frozenset = frozenset()


def with_int_values(v: Variant, values: dict, label: str) -> Variant:
    """v as Triton's JIT specializes it for these integer argument values: an argument equal to 1
    becomes a constant, one divisible by 16 is compiled knowing so (aligned, vectorized loads, no
    per-element masks along it), and each takes the type its value needs (i32 or i64). Uses the
    installed Triton's own specialization function. Registers can differ a lot: perturbed_linear's
    64 x 64 x 64 tile takes 238 registers with no integer specialization and about 105 with a
    4096 x 4096 layer's sizes (and there spills on sm_80)."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    sig, const, divisible = dict(v.sig), dict(v.const), set()
    for name, value in values.items():
        if name not in sig:
            raise KeyError(f"{v.kernel} has no argument {name!r}")
        kind, spec = native_specialize_impl(BaseBackend, value, False, True, True)[:2]
        if kind == "constexpr":
            sig[name], const[name] = "constexpr", spec
        else:
            sig[name] = kind
            if spec == "D":
                divisible.add(name)
    return v._replace(config=f"{v.config} {label}".strip(), sig=sig, const=const,
                      divisible=frozenset(divisible))


# The bits of a derived 64-bit seed, as launchers pass them (not a multiple of 16).
SEED = 0x5DEECE66D3A5B7C3
# Integer arguments as the JIT sees them for two layers. "4096": a 4096 x 4096 layer (16 members,
# stream offset 0), what a model runs. "odd": 4099 x 4100 at an odd stream offset, what odd test
# sizes run; what the launcher guarantees still holds there (an aligned variant has rem = 0 and
# K % 4 = 0, one member's P is 1, k_per_split is a multiple of BLOCK_K).
INTS = {
    "odd": {
        "noise_fill": {"n": 4099, "seed": SEED, "counter_base": 12345, "rem": 3},
        "weighted_noise_sum": {"n": 4099, "K": 3, "counter_base": 12345, "rem": 3},
        "noise_gram": {"K": 3, "n": 4099, "counter_base": 12345, "rem": 3, "n_chunks": 7},
        "noise_sketch": {"K": 3, "m": 4099, "n": 4099, "r": 13, "counter_base": 12345, "rem": 3,
                         "splits": 33},
        "philox": {"n": 4099},
    },
    "4096": {
        "noise_fill": {"n": 4096 * 4096, "seed": SEED, "counter_base": 0, "rem": 0},
        "weighted_noise_sum": {"n": 4096 * 4096, "K": 16, "counter_base": 0, "rem": 0},
        "noise_gram": {"K": 16, "n": 4096 * 4096, "counter_base": 0, "rem": 0, "n_chunks": 4096},
        "noise_sketch": {"K": 16, "m": 4096, "n": 4096, "r": 16, "counter_base": 0, "rem": 0,
                         "splits": 33},
        "philox": {"n": 4096},
    },
}


def _both_int_classes(v: Variant) -> list[Variant]:
    """v with an odd layer's integer arguments and with a 4096 x 4096 layer's (INTS)."""
    name = v.kernel.removesuffix("_left").removesuffix("_right")
    out = []
    for label, table in INTS.items():
        values = dict(table[name])
        if v.const.get("ALIGNED"):  # the launcher only sets it for rem = 0 and n % 4 = 0
            values.update(rem=0, n=4100 if label == "odd" else values["n"])
        out.append(with_int_values(v, values, f"ints={label}"))
    return out


def linear_ints(v: Variant, label: str, tokens: int) -> Variant:
    """A perturbed_linear variant as launched for a 4096 x 4096 layer (label "4096") or a
    4099 x 4100 one at an odd stream offset ("odd"), at `tokens` tokens per member."""
    one, block_k = v.const["ONE_MEMBER"], v.const["BLOCK_K"]
    if label == "4096":
        values = {"N": 4096, "K": 4096, "k_per_split": 512 if v.const["SPLIT"] else 4096,
                  "counter_base": 0, "rem": 0, "P": 1 if one else 16}
    else:
        values = {"N": 4099, "K": 4100 if v.const["ALIGNED"] else 4099,
                  "k_per_split": block_k * 33, "counter_base": 12345,
                  "rem": 0 if v.const["ALIGNED"] else 3, "P": 1 if one else 3}
    values.update(T=tokens, seed0=SEED if one else 0)
    return with_int_values(v, values, f"ints={label} T={tokens}")


def variants(include_fp32_linear: bool) -> list[Variant]:
    """Every configuration the launchers use, each with odd sizes and with a model layer's."""
    from corp_kernels.triton_kernels import (gaussian_noise, noise_gram, noise_sketch,
                                             perturbed_linear, philox, weighted_noise_sum)
    out = []
    for dt in ("fp32", "bf16", "fp16"):
        for add_src in (False, True):
            sig = {"out_ptr": f"*{dt}", "src_ptr": f"*{dt}", "n": "i32", "seed": "i64",
                   "counter_base": "i64", "rem": "i32", "alpha": "fp32", "ADD_SRC": "constexpr",
                   "BLOCK": "constexpr"}
            out += _both_int_classes(Variant("noise_fill", f"add_src={int(add_src)}", dt,
                                             gaussian_noise._noise_fill_kernel, sig,
                                             {"ADD_SRC": add_src, "BLOCK": 512}, {}, True))

    sig = {"out_ptr": "*fp32", "n": "i32", "seeds_ptr": "*i64", "weights_ptr": "*fp32", "K": "i32",
           "counter_base": "i64", "rem": "i32", "BLOCK": "constexpr"}
    out += _both_int_classes(Variant("weighted_noise_sum", "", "fp32",
                                     weighted_noise_sum._weighted_noise_sum_kernel, sig,
                                     {"BLOCK": 256}, {}, True))

    tiles = sorted({perturbed_linear._tiles(t) for t in (1, 16, 64, 65, 4096)})
    dispatched_tiles = perturbed_linear.dispatched_tiles()
    dtypes = ("bf16", "fp16") + (("fp32",) if include_fp32_linear else ())
    for dt in dtypes:
        for tile in tiles:
            for aligned in (True, False):
                for one_member in (True, False):
                    for split in (False, True):
                        # choose_strategy sends only aligned calls of few tokens to fused.
                        v = linear_variant(dt, tile, aligned, one_member, split,
                                           aligned and tile in dispatched_tiles)
                        out.append(linear_ints(v, "odd", 3))
                        if aligned:  # a model's layer: sizes of 16s, stream offset 0
                            out += [linear_ints(v, "4096", t) for t in _tokens_of(tile)]

    sig = {"out_ptr": "*fp32", "seeds_ptr": "*i64", "K": "i32", "n": "i32", "counter_base": "i64",
           "rem": "i32", "n_chunks": "i32", "SPLITS": "constexpr", "ONE_BLOCK": "constexpr",
           "BLOCK_S": "constexpr", "BLOCK_C": "constexpr"}
    for block_s, one_block in ((16, True), (32, True), (64, True), (64, False)):
        block_c = 32 if one_block else 16
        out += _both_int_classes(Variant(
            "noise_gram", f"seeds_block={block_s} one_block={int(one_block)}", "fp32",
            noise_gram._noise_gram_kernel, sig,
            {"SPLITS": 528, "ONE_BLOCK": one_block, "BLOCK_S": block_s, "BLOCK_C": block_c},
            {"num_warps": 8 if block_s == 64 else 4}, True))

    for side, fn, tm in (("right", noise_sketch._sketch_right_kernel, "omega_ptr"),
                         ("left", noise_sketch._sketch_left_kernel, "psi_ptr")):
        for block_r in (16, 64):
            for aligned in (True, False):
                sig = {"out_ptr": "*fp32", tm: "*fp32", "seeds_ptr": "*i64",
                       "weights_ptr": "*fp32", "K": "i32", "m": "i32", "n": "i32", "r": "i32",
                       "counter_base": "i64", "rem": "i32", "splits": "i32",
                       "ALIGNED": "constexpr",
                       "BLOCK_M": "constexpr", "BLOCK_N": "constexpr", "BLOCK_R": "constexpr"}
                v = Variant(f"noise_sketch_{side}", f"R={block_r} aligned={int(aligned)}", "fp32",
                            fn, sig, {"ALIGNED": aligned, "BLOCK_M": 32, "BLOCK_N": 32,
                                      "BLOCK_R": block_r}, {}, True)
                # unaligned: only an odd layer (a model's, offset 0, is aligned)
                out += _both_int_classes(v) if aligned else _both_int_classes(v)[:1]

    sig = {"counters_ptr": "*i64", "keys_ptr": "*i64", "out_ptr": "*i64", "n": "i32",
           "BLOCK": "constexpr"}
    out += _both_int_classes(Variant("philox", "", "u32", philox._philox_kernel, sig,
                                     {"BLOCK": 64}, {}, True))
    return out


def linear_variant(dt: str, tile: tuple, aligned: bool, one_member: bool, split: bool,
                   dispatched: bool):
    """One perturbed_linear configuration, in variants()'s form."""
    from corp_kernels.triton_kernels import perturbed_linear
    bt, bn, bk, warps = tile
    sig = {"x_ptr": f"*{dt}", "w_ptr": f"*{dt}", "b_ptr": f"*{dt}",
           "y_ptr": "*fp32" if split else f"*{dt}", "seeds_ptr": "*i64", "sigmas_ptr": "*fp32",
           "seed0": "i64", "sigma0": "fp32", "P": "i32", "T": "i32", "N": "i32", "K": "i32",
           "k_per_split": "i32", "counter_base": "i64", "rem": "i32", "ONE_MEMBER": "constexpr",
           "SPLIT": "constexpr", "HAS_BIAS": "constexpr", "ALIGNED": "constexpr",
           "LOW_PRECISION_DOT": "constexpr", "BLOCK_T": "constexpr", "BLOCK_N": "constexpr",
           "BLOCK_K": "constexpr"}
    const = {"ONE_MEMBER": one_member, "SPLIT": split, "HAS_BIAS": not split, "ALIGNED": aligned,
             "LOW_PRECISION_DOT": dt != "fp32", "BLOCK_T": bt, "BLOCK_N": bn, "BLOCK_K": bk}
    label = (f"tile={bt}x{bn}x{bk} aligned={int(aligned)} one_member={int(one_member)} "
             f"split={int(split)}")
    return Variant("perturbed_linear", label, dt, perturbed_linear._perturbed_linear_kernel, sig,
                   const, {"num_warps": warps}, dispatched)


def _tokens_of(tile: tuple) -> tuple[int, ...]:
    """Token counts whose JIT specialization differs for a tile: decode (T = 1 is a constant)
    and a multiple of 16, for the few-token tiles; prefill for the others."""
    return (1, 64) if tile[0] <= 64 else (2048,)


def fused_tile_variants():
    """Every fused tile a decode step could use, bf16, at a 4096 x 4096 layer's sizes and T = 1 or
    64: one member with split-K (decode of one model) and 16 members without (P programs per W
    tile). For the sweep that narrows the tiles a GPU then times
    (perturbed_linear.DECODE_TILE_CANDIDATES)."""
    return [linear_ints(linear_variant("bf16", (bt, bn, bk, warps), True, one_member, one_member,
                                       False), "4096", tokens)
            for bt in (16, 32, 64) for bn in (32, 64, 128) for bk in (32, 64) for warps in (4, 8)
            for one_member in (True, False) for tokens in (1, 64)]


# Per-SM limits of sm_80 and sm_90 (CUDA occupancy calculator): four sub-partitions of 16K
# registers, allocated per warp in units of 256; at most 64 resident warps and 32 resident
# programs; shared memory per SM, allocated in units of 128 bytes with 1 KiB reserved per program.
_SM_LIMITS = {80: {"smem": 164 << 10}, 90: {"smem": 228 << 10}}


def resident_warps(cc: int, regs: int, warps: int, smem: int) -> int:
    """Warps of one kernel resident on an SM at once: what hides the latency of an ALU-bound
    kernel such as the noise generator. Registers usually decide it here: 105 per thread leave two
    8-warp programs per SM (16 warps), where noise_fill (52-56 registers, 4 warps) keeps 36."""
    per_warp = -(-regs * 32 // 256) * 256
    warps_by_regs = 4 * (16384 // per_warp)
    smem_per_program = -(-smem // 128) * 128 + 1024
    programs = min(warps_by_regs // warps, 64 // warps, 32,
                   _SM_LIMITS[cc]["smem"] // smem_per_program)
    return programs * warps


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
    parser.add_argument("--fused-tiles", action="store_true",
                        help="instead: every fused decode tile (bf16, aligned), for choosing the "
                             "tiles a GPU times (default out benchmarks/results/aot-fused-tiles)")
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") == "1":
        parser.error("unset TRITON_INTERPRET: the interpreter cannot compile")

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import get_ptxas
    from triton.compiler import ASTSource

    candidates = variants(args.fp32) if not args.fused_tiles else fused_tile_variants()
    todo = [v for v in candidates if (not args.filter or args.filter in v[0])
            and (v[7] or not args.dispatched_only)]
    archs = [int(a) for a in args.arch.split(",")]
    print(f"triton {triton.__version__}: {len(todo)} variants x {len(archs)} archs", flush=True)
    rows, failures, spills = [], 0, 0
    for cc in archs:
        target = GPUTarget("cuda", cc, 32)
        ptxas = get_ptxas(cc).path if "arch" in get_ptxas.__code__.co_varnames else get_ptxas().path
        for kernel, config, dtype, fn, sig, const, options, dispatched, divisible in todo:
            # Pointers 16-byte aligned, as the JIT specializes torch's allocations, and the
            # integers the variant's sizes make multiples of 16.
            attrs = {(i,): [["tt.divisibility", 16]] for i, (name, v) in enumerate(sig.items())
                     if v.startswith("*") or name in divisible}
            row = {"arch": f"sm_{cc}", "kernel": kernel, "config": config, "dtype": dtype,
                   "dispatched": dispatched, "num_warps": options.get("num_warps", 4)}
            start = time.time()
            try:
                compiled = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=const,
                                                    attrs=attrs), target=target, options=options)
                ptx = compiled.asm["ptx"]
                arch = re.search(r"\.target\s+(\S+)", ptx).group(1)
                row.update(ok=True, num_warps=compiled.metadata.num_warps,
                           shared=compiled.metadata.shared, wgmma="wgmma" in ptx,
                           mma="mma.sync" in ptx, **ptxas_usage(ptxas, ptx, arch))
                row["resident_warps"] = resident_warps(cc, row["regs"], row["num_warps"],
                                                       row["shared"])
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
                     f"warps/SM={row['resident_warps']} "
                     f"wgmma={int(row['wgmma'])} mma={int(row['mma'])}"
                     if row["ok"] else f"FAILED {row['error'][:300]}")
                  + f" ({row['seconds']} s)", flush=True)
    partial = bool(args.filter or args.dispatched_only)
    default_out = "aot-fused-tiles" if args.fused_tiles else "aot"
    out, wrote = Path(args.out or ROOT / "benchmarks" / "results" / default_out), ""
    if args.merge:
        if not args.filter or args.dispatched_only:
            parser.error("--merge needs --filter and a full (not --dispatched-only) run")
        table = out.with_suffix(".json")
        rows, partial = merge_rows(json.loads(table.read_text())["rows"], rows, args.filter), False
    if args.out or not partial:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps({"triton": triton.__version__,
                                                        "rows": rows}, indent=1))
        out.with_suffix(".md").write_text(render_tiles(rows, triton.__version__) if args.fused_tiles
                                          else render(rows, triton.__version__))
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


def render_tiles(rows: list[dict], version: str) -> str:
    """The fused-tile sweep: one line per (arch, tile, warps); one member (split-K) and
    population, each at T = 1 and T = 64, side by side."""
    from corp_kernels.triton_kernels.perturbed_linear import DECODE_TILE_CANDIDATES
    lines = [f"# Fused perturbed_linear tiles for decode, compiled ahead of time (triton "
             f"{version}, bf16, no GPU)", "",
             "Written by `scripts/aot_check.py --fused-tiles`. Each tile is compiled as Triton's "
             "JIT specializes it for a 4096 x 4096 layer (sizes multiples of 16, stream offset 0; "
             "T = 1 and P = 1 become constants), at T = 1 and T = 64, for one member (split-K) and "
             "for 16 members. The kernel is bound by its noise generator (Philox4x32-10 + Box-Muller), so "
             "the warps resident per SM, which hide its latency, matter; registers decide them. "
             "Each cell: registers, spill stores/loads (bytes per thread), warps resident per SM. "
             "Candidates (`DECODE_TILE_CANDIDATES`, marked) are spill-free in every cell on both "
             "archs, except 64x64x64 on sm_80 (the tile used before, kept to be timed against); a "
             "GPU times them against each other (`benchmarks/gpu_fused_tiles.py`) before `_tiles` "
             "changes. These are compile-time figures, not speed.", "",
             "| arch | tile TxNxK | warps | normals/thread/step | one member T=1 | one member T=64 "
             "| 16 members T=1 | 16 members T=64 | tensor cores | candidate |",
             "|---|---|---:|---:|---|---|---|---|---|---|"]
    grouped: dict = {}
    for r in rows:
        tile = r["config"].split()[0].removeprefix("tile=")
        who = "one" if "one_member=1" in r["config"] else "pop"
        tokens = r["config"].rsplit("T=", 1)[1]
        grouped.setdefault((r["arch"], tile, r["num_warps"]), {})[f"{who} {tokens}"] = r

    def cell(r):
        if r is None or not r["ok"]:
            return "FAILED" if r else ""
        return f"{r['regs']}, {r['spill_stores']}/{r['spill_loads']}, {r['resident_warps']}"
    for (arch, tile, warps), cells in grouped.items():
        bt, bn, bk = map(int, tile.split("x"))
        ok = [r for r in cells.values() if r["ok"]]
        cores = ("wgmma" if ok and ok[0]["wgmma"] else "mma" if ok and ok[0]["mma"] else "-")
        mark = "yes" if (bt, bn, bk, warps) in DECODE_TILE_CANDIDATES else ""
        lines.append(f"| {arch} | {tile} | {warps} | {bn * bk // (32 * warps)} | "
                     + " | ".join(cell(cells.get(k))
                                  for k in ("one 1", "one 64", "pop 1", "pop 64"))
                     + f" | {cores} | {mark} |")
    return "\n".join(lines) + "\n"


def render(rows: list[dict], version: str) -> str:
    lines = [f"# Triton kernels compiled ahead of time (triton {version}, no GPU)", "",
             "Every configuration the launchers use; `scripts/aot_check.py` writes this table and "
             "fails CI on a compile error or on a spill in an fp16/bf16 configuration the "
             "dispatcher launches. spill = bytes of spill stores/loads per thread (ptxas -v); the stack also "
             "holds the precise sin/cos range-reduction table. dispatched = no: only "
             "CORP_KERNELS_LINEAR_STRATEGY=fused reaches it (unaligned or many-token fused tiles "
             "go to the chunked strategy). Integer arguments as the JIT specializes them: ints=odd "
             "for a 4099 x 4100 layer at an odd stream offset (T = 3), ints=4096 for a 4096 x 4096 "
             "layer at offset 0 (sizes multiples of 16; T = 1 and one member's P = 1 become "
             "constants), which is what a model's layers run. warps/SM = warps of the kernel "
             "resident on one SM, from registers, shared memory and warps (what hides the noise "
             "generator's latency).", "",
             "| arch | kernel | dtype | config | dispatched | regs | spill st/ld | stack | smem | "
             "warps | warps/SM | tensor cores | verdict |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in rows:
        if not r["ok"]:
            lines.append(f"| {r['arch']} | {r['kernel']} | {r['dtype']} | {r['config']} | "
                         f"{'yes' if r['dispatched'] else 'no'} | | | | | | | | "
                         f"FAILED: {r['error'][:120]} |")
            continue
        cores = "wgmma" if r["wgmma"] else "mma" if r["mma"] else "-"
        spilled = (r["spill_stores"] or 0) + (r["spill_loads"] or 0) > 0
        verdict = "FAIL: spills" if r["fails"] else "spills (not failed)" if spilled else "ok"
        lines.append(f"| {r['arch']} | {r['kernel']} | {r['dtype']} | {r['config']} | "
                     f"{'yes' if r['dispatched'] else 'no'} | {r['regs']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['stack']} | {r['shared']} | "
                     f"{r['num_warps']} | {r.get('resident_warps', '')} | {cores} | {verdict} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
