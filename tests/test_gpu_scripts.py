"""The GPU check's pieces, as far as a CPU runs them: the search-throughput benchmark on a tiny
model, the report renderer on a committed run, and the scripts' refusal to run without CUDA."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_script_parses():
    subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], check=True)


def test_search_throughput_benchmark_on_a_tiny_model(tmp_path):
    from benchmarks import bench_search_throughput as bench
    out = tmp_path / "search.json"
    assert bench.main(["--size", "tiny", "--device", "cpu", "--prompts", "2", "--new-tokens", "2",
                       "--members", "2", "--population", "2", "--population-fused", "2",
                       "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    modes = [r["mode"] for r in result["rows"]]
    assert modes == ["user_loop", "inplace", "fused", "population-2", "population-2-all-fused"]
    for row in result["rows"]:
        assert row["members"] == 2 and row["seconds"] > 0
        assert row["x_user_loop"] == pytest.approx(
            row["members_per_s"] / result["rows"][0]["members_per_s"])


def test_search_benchmark_user_loop_perturbs_and_restores():
    """The baseline really perturbs (generation changes) and puts the weights back."""
    from benchmarks import bench_search_throughput as bench
    from corp.method.perturb import state_fingerprint
    model = bench.build_model("tiny", "cpu", torch.float32)
    b = bench.SearchBench(model, prompts=2, prompt_len=4, new_tokens=3, sigma=0.5)
    before, base_out = state_fingerprint(model), b.generate()
    seen = []
    original = b.generate
    b.generate = lambda copies=1: seen.append(original(copies)) or seen[-1]
    b.user_loop([1])
    assert state_fingerprint(model) == before
    assert not torch.equal(seen[0], base_out)  # sigma 0.5 changes greedy tokens of a tiny model


def test_gpu_report_renders_a_committed_run():
    from benchmarks.gpu_report import render
    text = render(ROOT / "benchmarks" / "results" / "gpu-NVIDIA-H200-run2")
    for heading in ("## Kernel tests on CUDA", "## perturbed_linear, bf16",
                    "## Population search, end to end", "eager call vs CUDA-graph replay"):
        assert heading in text
    assert "763 passed" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
@pytest.mark.parametrize("module", ["gpu_microbench", "gpu_linear_graphs"])
def test_gpu_only_benchmarks_refuse_without_cuda(module, tmp_path):
    import importlib
    assert importlib.import_module(f"benchmarks.{module}").main(
        ["--out", str(tmp_path / "x.json")]) == 2


def test_gpu_report_includes_the_linear_rule_table(tmp_path):
    from benchmarks import bench_linear_rule
    from benchmarks.gpu_report import render
    assert bench_linear_rule.main(["--quick", "--device", "cpu",
                                   "--output", str(tmp_path / "linear_rule.md")]) == 0
    text = render(tmp_path)
    assert "\n## perturbed_linear: fused vs chunked" in text  # one level below the report's title
    assert "| 576x576 | 4 |" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run is a check of the script")
def test_fused_tile_benchmark_runs_every_candidate_under_the_interpreter(tmp_path):
    from benchmarks import gpu_fused_tiles
    from corp_kernels.triton_kernels.perturbed_linear import DECODE_TILE_CANDIDATES
    out = tmp_path / "linear_rule.md"
    out.write_text("# earlier table\n")
    assert gpu_fused_tiles.main(["--output", str(out), "--append", "--budget-s", "600"]) == 0
    text = out.read_text()
    assert text.startswith("# earlier table\n")  # --append keeps what was there
    assert "not a measurement" in text
    assert "| 8x64 | 1 | 1 |" in text and "| 8x64 | 2 | 2 |" in text
    header = next(line for line in text.splitlines() if line.startswith("| W | T | P |"))
    assert header.count(" w8") == len(DECODE_TILE_CANDIDATES)
    errors = [float(e) for e in re.findall(r"err ([0-9.e+-]+)\)", text)]
    assert len(errors) == 2 * len(DECODE_TILE_CANDIDATES) and max(errors) < 1e-5
    # every tile but the current one is compared with it, paired
    assert text.count("; cur ") == 2 * (len(DECODE_TILE_CANDIDATES) - 1)
    # orientation: materialize / tile, and the interpreted kernel is far slower than torch here
    mats = [float(m) for m in re.findall(r"\(mat ([0-9.]+) \[", text)]
    assert len(mats) == 2 * len(DECODE_TILE_CANDIDATES) and max(mats) < 0.5
    assert not list(tmp_path.glob("*.tmp*"))  # written whole: no temporary left behind


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU run is a check of the script")
def test_fused_tile_benchmark_flags_a_wrong_tile_and_fails(tmp_path, monkeypatch):
    from benchmarks import gpu_fused_tiles
    real = gpu_fused_tiles.relative_error
    monkeypatch.setattr(gpu_fused_tiles, "relative_error", lambda y, ref: real(y * 1.5, ref))
    out = tmp_path / "t.md"
    assert gpu_fused_tiles.main(["--output", str(out), "--budget-s", "600"]) == 1
    assert "ERROR err" in out.read_text()


def test_relative_error_is_scaled_by_the_references_rms():
    from benchmarks.gpu_fused_tiles import relative_error
    ref = torch.tensor([3.0, -4.0])  # rms = sqrt(12.5)
    assert relative_error(ref + torch.tensor([0.0, 0.5]), ref) == pytest.approx(0.5 / 12.5 ** 0.5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_fused_tile_benchmark_refuses_without_cuda_or_the_interpreter(tmp_path, monkeypatch):
    from benchmarks import gpu_fused_tiles
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert gpu_fused_tiles.main(["--output", str(tmp_path / "x.md")]) == 2
    assert not (tmp_path / "x.md").exists()


def test_jit_specialization_is_described_by_argument_name():
    """A run's JIT rows say which configuration each register count is (run 2's key of the
    64x64x64 one-member split-K tile at a model's sizes: 109 registers, as the AOT rows say)."""
    from benchmarks.gpu_microbench import describe_specialization
    from corp_kernels.triton_kernels import perturbed_linear as tpl
    data = json.loads((ROOT / "benchmarks" / "results" / "gpu-NVIDIA-H200-run2"
                       / "microbench.json").read_text())
    row = [r for r in data["sections"]["jit_kernel_resources"]
           if r["kernel"] == "_perturbed_linear_kernel"][3]
    spec = describe_specialization(list(tpl._perturbed_linear_kernel.arg_names), row["key"])
    assert spec.split() == ["P=1", "T%16", "N%16", "K%16", "k_per_split%16", "counter_base%16",
                            "rem%16", "ONE_MEMBER=True", "SPLIT=True", "HAS_BIAS=False",
                            "ALIGNED=True", "LOW_PRECISION_DOT=True", "BLOCK_T=64", "BLOCK_N=64",
                            "BLOCK_K=64"]
    assert row["n_regs"] == 109
    assert describe_specialization(["a"], row["key"]) == ""  # another signature
    assert describe_specialization(["a"], "not a key") == ""
