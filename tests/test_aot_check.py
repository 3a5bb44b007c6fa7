"""scripts/aot_check.py checks what the dispatcher launches: its variant list follows the
launchers' own rule, so a kernel configuration the rule can reach is never left unchecked."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[1]


def _aot_module():
    spec = importlib.util.spec_from_file_location("aot_check", ROOT / "scripts" / "aot_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dispatched_linear_variants_are_exactly_what_the_rule_can_launch(monkeypatch):
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    monkeypatch.delenv("CORP_KERNELS_LINEAR_STRATEGY", raising=False)
    reachable = {(tpl._tiles(t), aligned) for t in range(1, 4097) for aligned in (True, False)
                 if tpl.choose_strategy(t, aligned) == "fused"}
    rows = [v for v in _aot_module().variants(include_fp32_linear=True)
            if v[0] == "perturbed_linear"]
    assert rows
    for kernel, config, dtype, fn, sig, const, options, dispatched, _divisible in rows:
        tile = (const["BLOCK_T"], const["BLOCK_N"], const["BLOCK_K"], options["num_warps"])
        assert dispatched == ((tile, const["ALIGNED"]) in reachable), config
        assert (sig["y_ptr"] == "*fp32") == const["SPLIT"] or dtype == "fp32"
    # every reachable (tile, aligned) pair is compiled in every dtype
    for tile, aligned in reachable:
        for dtype in ("bf16", "fp16", "fp32"):
            assert any(v[2] == dtype and v[7] and v[5]["ALIGNED"] == aligned for v in rows)


def test_aot_check_refuses_the_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(SystemExit):
        _aot_module().main(["--filter", "philox"])


def test_merge_replaces_one_kernels_rows_in_place():
    """`--filter K --merge` updates one kernel's rows of the committed table and keeps the rest
    where they were (a filtered run used to overwrite the whole table with its few rows)."""
    row = lambda arch, kernel, config="": {"arch": arch, "kernel": kernel, "config": config}  # noqa: E731
    old = [row("sm_90", "noise_fill"), row("sm_90", "noise_sketch_left", "a"),
           row("sm_90", "noise_sketch_right", "b"), row("sm_90", "philox"),
           row("sm_80", "noise_fill"), row("sm_80", "philox")]
    new = [row("sm_90", "noise_sketch_left", "A"), row("sm_80", "noise_sketch_left", "C")]
    merged = _aot_module().merge_rows(old, new, "noise_sketch")
    assert [(r["arch"], r["kernel"], r["config"]) for r in merged] == [
        ("sm_90", "noise_fill", ""), ("sm_90", "noise_sketch_left", "A"), ("sm_90", "philox", ""),
        ("sm_80", "noise_fill", ""), ("sm_80", "philox", ""), ("sm_80", "noise_sketch_left", "C")]


@pytest.mark.parametrize("cc, regs, warps, smem, expected", [
    (90, 240, 8, 16384, 8),  # 240 registers: one 8-warp program fits 64K
    (90, 56, 4, 4096, 36),  # 56 -> 1792 per warp: 9 programs of 4 warps
    (90, 255, 4, 0, 8),  # 8192 per warp: 2 programs
    (90, 32, 4, 0, 64),  # thread limit: 16 programs of 4 warps
    (90, 16, 1, 0, 32),  # program limit: 32 of 1 warp
    (80, 32, 4, 60 << 10, 8),  # shared memory: 164 KiB / 61 KiB = 2 programs
    (90, 32, 4, 60 << 10, 12),  # sm_90 has 228 KiB: 3
    (90, 105, 1, 0, 16),  # 3584 per warp: 4 per 16K sub-partition, not 18 of the whole 64K
    (90, 32, 4, 75 * 1024 + 1, 8),  # 75 KiB + 1 byte rounds to 75 KiB + 128, + 1 KiB: 2 fit
])
def test_resident_warps_follows_registers_threads_programs_and_shared_memory(cc, regs, warps,
                                                                            smem, expected):
    assert _aot_module().resident_warps(cc, regs, warps, smem) == expected


def test_fused_tile_candidates_are_spill_free_on_both_archs_in_the_committed_sweep():
    """DECODE_TILE_CANDIDATES says its tiles compile without spills on sm_90 and sm_80 at a
    model's sizes, except the tile used before (64 x 64 x 64, kept to be timed against); the
    committed sweep (scripts/aot_check.py --fused-tiles) must show it for each one."""
    from corp_kernels.triton_kernels.perturbed_linear import DECODE_TILE_CANDIDATES, _tiles
    assert _tiles(1) in DECODE_TILE_CANDIDATES
    rows = json.loads((ROOT / "benchmarks" / "results" / "aot-fused-tiles.json").read_text())["rows"]
    for bt, bn, bk, warps in DECODE_TILE_CANDIDATES:
        mine = [r for r in rows if r["config"].startswith(f"tile={bt}x{bn}x{bk} ")
                and r["num_warps"] == warps]
        assert {(r["arch"], "one_member=1" in r["config"]) for r in mine} == {
            (a, one) for a in ("sm_90", "sm_80") for one in (True, False)}, (bt, bn, bk, warps)
        for r in mine:
            assert r["ok"], r
            spilled = r["spill_stores"] or r["spill_loads"]
            assert not spilled or ((bt, bn, bk) == (64, 64, 64) and r["arch"] == "sm_80"), r


def test_fused_tile_sweep_covers_the_dispatched_decode_tile():
    variants = _aot_module().fused_tile_variants()
    from corp_kernels.triton_kernels.perturbed_linear import _tiles
    bt, bn, bk, warps = _tiles(1)
    assert any((v[5]["BLOCK_T"], v[5]["BLOCK_N"], v[5]["BLOCK_K"], v[6]["num_warps"])
               == (bt, bn, bk, warps) for v in variants)
    assert all(v[2] == "bf16" and v[5]["ALIGNED"] and not v[7] for v in variants)


def test_integer_arguments_are_specialized_as_the_jit_does():
    """A size of 1 becomes a constant, a multiple of 16 is compiled knowing so, and each argument
    takes the type its value needs: the code a layer of those sizes runs."""
    aot = _aot_module()
    linear = aot.linear_variant("bf16", (64, 64, 64, 8), True, True, True, True)
    v = aot.with_int_values(linear, {"T": 1, "P": 1, "N": 4096, "K": 17, "rem": 0,
                                     "counter_base": 0, "seed0": 2**40 + 3}, "ints=x")
    assert v.sig["T"] == v.sig["P"] == "constexpr" and v.const["T"] == v.const["P"] == 1
    assert v.divisible == {"N", "rem", "counter_base"}  # 17 and the seed are neither
    assert v.sig["counter_base"] == "i32" and v.sig["seed0"] == "i64"  # by value, as the JIT
    assert v.config.endswith(" ints=x") and v.dispatched
    assert linear.sig["T"] == "i32" and "T" not in linear.const  # the original is unchanged
    with pytest.raises(KeyError, match="no argument 'tokens'"):
        aot.with_int_values(linear, {"tokens": 16}, "bad")


def test_every_dispatched_linear_variant_is_also_checked_at_a_model_layers_sizes():
    rows = [v for v in _aot_module().variants(include_fp32_linear=False)
            if v.kernel == "perturbed_linear" and v.dispatched]
    odd = [v for v in rows if v.config.endswith("ints=odd T=3")]
    assert odd
    for v in odd:  # what the launcher guarantees even for odd sizes, and no more
        # rem = 0 when aligned, k_per_split a multiple of BLOCK_K; a population's unused seed0 is 0
        expected = {"k_per_split", "rem"} | (set() if v.const["ONE_MEMBER"] else {"seed0"})
        assert v.divisible == expected
        assert "N" not in v.divisible and "K" not in v.divisible and "T" not in v.divisible
        assert (v.sig["P"] == "constexpr") == v.const["ONE_MEMBER"]
        base = v.config.removesuffix(" ints=odd T=3")
        for tokens in (1, 64):
            model = [m for m in rows if m.dtype == v.dtype
                     and m.config == f"{base} ints=4096 T={tokens}"]
            assert len(model) == 1, (v.config, tokens)
            assert {"N", "K", "k_per_split"} <= model[0].divisible
            assert (model[0].sig["T"] == "constexpr") == (tokens == 1)


def test_fused_tile_table_puts_each_variant_in_its_column():
    """render_tiles: one line per (arch, tile, warps), the four (members, T) variants in order."""
    def row(one, tokens, regs):
        return {"arch": "sm_90", "ok": True, "num_warps": 8, "wgmma": True, "mma": False,
                "config": f"tile=64x32x32 aligned=1 one_member={int(one)} split={int(one)} "
                          f"ints=4096 T={tokens}", "regs": regs, "spill_stores": 0,
                "spill_loads": 0, "resident_warps": 40}
    rows = [row(False, 64, 4), row(True, 1, 1), row(False, 1, 3), row(True, 64, 2)]
    text = _aot_module().render_tiles(rows, "3.x")
    line = next(x for x in text.splitlines() if x.startswith("| sm_90 | 64x32x32 |"))
    cells = [c.strip() for c in line.strip("|").split("|")]
    assert cells[2:4] == ["8", "4"]  # warps, normals per thread per K step: 32 * 32 / 256
    assert [c.split(",")[0] for c in cells[4:8]] == ["1", "2", "3", "4"]
    assert cells[8:] == ["wgmma", "yes"]  # the dispatched tile is a candidate
