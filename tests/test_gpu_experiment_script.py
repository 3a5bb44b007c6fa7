"""scripts/gpu_experiment.sh and scripts/gpu_carry.py, checked on the CPU: the GPU machine gets
one try per session, so the script's plumbing (joining the model parts, packing the state,
resuming from it) is tested here on the built-in tiny model."""

import json
import os
import shutil
import subprocess
import sys
import tarfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import gpu_carry  # noqa: E402

TINY = """model: builtin:tiny-llama-add
tasks: [add]
population: 8
corp_population: 4
top_k: 2
builtin_steps: 60
stage2_rounds: 1
stage2_members: 4
max_rank: 4
gradient_steps: 0
procedures: [gated, released]
corp_configs: {released: {quantiles: [0.5], betas: [1.0], alphas: [1.0]}}
output_dir: runs/tiny
results_dir: results
experiment_name: tiny
progress: false
log_level: INFO
"""


def _repo(tmp_path, name):
    repo = tmp_path / name
    (repo / "configs").mkdir(parents=True)
    shutil.copytree(os.path.join(ROOT, "scripts"), repo / "scripts")
    (repo / "configs" / "tiny.yaml").write_text(TINY)
    return repo


def _run(repo, out):
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=ROOT, OUT=str(out),
               CONFIG="configs/tiny.yaml", BUDGET_S="400")
    return subprocess.run(["bash", "scripts/gpu_experiment.sh", "run"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=600)


def test_state_packs_and_the_next_call_resumes_from_it(tmp_path):
    first = _run(_repo(tmp_path, "call1"), tmp_path / "out1")
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    packed = tmp_path / "out1" / "state.tar.gz"
    with tarfile.open(packed) as tar:
        names = tar.getnames()
    assert "runs/tiny/add/population.jsonl" in names
    assert "results/tiny/add-released.json" in names and "results/tiny.md" in names
    assert not any(n.endswith(".lock") for n in names)
    # The next call, on a fresh machine, gets the state through .gpu_carry/state/.
    repo = _repo(tmp_path, "call2")
    (repo / ".gpu_carry" / "state").mkdir(parents=True)
    shutil.copy(packed, repo / ".gpu_carry" / "state" / "state.tar.gz")
    second = _run(repo, tmp_path / "out2")
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    log = second.stdout + second.stderr
    assert "resuming from" in log and "8 of 8 members already" in log
    assert "step corp-released done before" in log
    before = json.loads((tmp_path / "call1" / "results" / "tiny.json").read_text())["rows"]
    after = json.loads((repo / "results" / "tiny.json").read_text())["rows"]
    assert [r["reward"] for r in after] == [r["reward"] for r in before]


def test_parts_join_to_the_file_and_a_damaged_part_is_refused(tmp_path):
    source = tmp_path / "model.gguf"
    source.write_bytes(os.urandom(10_000))
    carry = tmp_path / "carry"
    index = gpu_carry.prepare(str(source), str(carry), part_bytes=4096, wheels=False)
    assert [p["bytes"] for p in index["parts"]] == [4096, 4096, 1808]
    dest = gpu_carry.join(str(tmp_path / "joined.gguf"), str(carry))
    assert open(dest, "rb").read() == source.read_bytes()
    os.remove(dest)
    part = carry / "smollm2" / "part-2"
    data = bytearray(part.read_bytes())
    data[7] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(SystemExit, match="part-2 does not have its recorded SHA-256"):
        gpu_carry.join(str(tmp_path / "joined.gguf"), str(carry))
    assert not os.path.exists(tmp_path / "joined.gguf")
    os.remove(part)
    with pytest.raises(SystemExit, match="part-2 is missing"):
        gpu_carry.join(str(tmp_path / "joined.gguf"), str(carry))
