"""scripts/aot_check.py checks what the dispatcher launches: its variant list follows the
launchers' own rule, so a kernel configuration the rule can reach is never left unchecked."""

import importlib.util
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
    for kernel, config, dtype, fn, sig, const, options, dispatched in rows:
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
