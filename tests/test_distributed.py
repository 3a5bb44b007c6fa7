"""Distributed population search under torchrun (gloo, 2 ranks on this CPU): the same rewards as
one process, and a rank killed with SIGKILL loses nothing after a restart."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from corp.builtin import pretrain_tiny
from corp.models import save_model
from corp.tasks import AdditionTask

TASK_FILE = "from corp.tasks import AdditionTask\nTASK = AdditionTask(n_train=48, n_val=8, " \
            "n_test=8)\n"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    save_model(pretrain_tiny(AdditionTask(), steps=200), str(root / "model"))
    (root / "task.py").write_text(TASK_FILE)
    return root


# torchrun --standalone binds its own rendezvous port (localhost, port 0): a port picked here and
# handed over would be free when chosen but could be taken by another process before torchrun
# binds it (two test runs at once, a parallel worker).
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2"]


def _args(root, out, n, mode):
    return ["-m", "corp", "search", "--model", str(root / "model"), "--task",
            str(root / "task.py"), "--population", str(n), "--sigmas", "0.002", "0.005", "0.01",
            "--mode", mode, "--output-dir", str(out), "--no-progress", "--log-level", "WARNING"]


def _env(threads=1):
    return dict(os.environ, OMP_NUM_THREADS=str(threads))


def single(root, out, n, mode):
    subprocess.run([sys.executable, *_args(root, out, n, mode)], env=_env(), check=True,
                   timeout=300, capture_output=True)


def torchrun(root, out, n, mode, wait=True):
    cmd = [*TORCHRUN, *_args(root, out, n, mode)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if wait:
        out_text = proc.communicate(timeout=300)[0].decode(errors="replace")
        assert proc.returncode == 0, out_text[-3000:]
    return proc


def rewards(path):
    lines = open(path).read().splitlines()
    return [(r["seed"], r["rewards"]) for r in map(json.loads, lines[1:])]


@pytest.mark.parametrize("mode", ["population", "inplace"])
def test_two_ranks_give_the_single_process_population(setup, tmp_path, mode):
    single(setup, tmp_path / "single", 40, mode)
    torchrun(setup, tmp_path / "dist", 40, mode)
    one = rewards(tmp_path / "single" / "population.jsonl")
    two = rewards(tmp_path / "dist" / "population.jsonl")
    assert one == two and len(one) == 40
    assert len({json.dumps(r) for _, r in one}) > 5  # the rewards do differ between members
    assert (tmp_path / "single" / "population.jsonl").read_bytes() == \
        (tmp_path / "dist" / "population.jsonl").read_bytes()
    by_rank = [rewards(tmp_path / "dist" / f"population.rank{r}.jsonl") for r in (0, 1)]
    assert sorted(s for part in by_rank for s, _ in part) == sorted(s for s, _ in one)


def _worker_pid(parent: int, rank: int) -> int | None:
    """The torchrun worker process with RANK=rank under `parent`."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            if ppid != parent:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = dict(kv.split(b"=", 1) for kv in f.read().split(b"\0") if b"=" in kv)
            if env.get(b"RANK") == str(rank).encode():
                return int(pid)
        except (OSError, ValueError, IndexError):
            continue
    return None


def test_sigkill_of_a_rank_then_restart_gives_the_same_population(setup, tmp_path):
    n = 120
    out = tmp_path / "dist"
    proc = torchrun(setup, out, n, "inplace", wait=False)
    rank1_log = out / "population.rank1.jsonl"
    deadline = time.time() + 120
    killed = None
    while time.time() < deadline and proc.poll() is None:
        if rank1_log.exists() and len(rank1_log.read_text().splitlines()) > 8:
            killed = _worker_pid(proc.pid, 1)
            if killed:
                os.kill(killed, signal.SIGKILL)
                break
        time.sleep(0.02)
    proc.communicate(timeout=120)
    assert killed, "rank 1 was not found running"
    assert proc.returncode != 0  # the job failed with its rank
    logged = sum(len(rewards(p)) for p in out.glob("population.rank*.jsonl"))
    assert 8 <= logged < n and not (out / "population.jsonl").exists()

    torchrun(setup, out, n, "inplace")  # the same command again
    single(setup, tmp_path / "single", n, "inplace")
    assert rewards(out / "population.jsonl") == rewards(tmp_path / "single" / "population.jsonl")
    seeds = [s for p in out.glob("population.rank*.jsonl") for s, _ in rewards(p)]
    assert len(seeds) == len(set(seeds)) == n  # nothing evaluated twice, nothing lost


def test_streaming_consolidation_split_by_layer_across_ranks(setup, tmp_path):
    from safetensors.torch import load_file

    from corp.method.population import Record, member_seeds
    names = [f"model.layers.{i}.{m}.weight" for i in range(2)
             for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")]
    outs = {}
    for label in ("single", "dist"):
        out = tmp_path / label
        out.mkdir()
        with open(out / "population.jsonl", "w") as f:
            f.write(json.dumps({"header": {"parameters": names}}) + "\n")
            for i, s in enumerate(member_seeds(6, 0)):
                f.write(json.dumps(Record(s, 1e-2, float(i % 4), 0.0, [0.0], [False]).__dict__)
                        + "\n")
        args = ["-m", "corp", "consolidate", "--streaming", "--model", str(setup / "model"),
                "--output-dir", str(out), "--population", "6", "--top-k", "6", "--max-rank", "4",
                "--no-progress"]
        if label == "single":
            subprocess.run([sys.executable, *args], env=_env(), check=True, timeout=300,
                           capture_output=True)
        else:
            proc = subprocess.run([*TORCHRUN, *args], env=_env(), timeout=300,
                                  capture_output=True, text=True)
            assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
        outs[label] = out
    for rel in ("adapter/adapter_model.safetensors", "merged-lowrank/model.safetensors"):
        one, two = (load_file(str(outs[k] / rel)) for k in ("single", "dist"))
        assert sorted(one) == sorted(two)
        for key in one:
            assert __import__("torch").equal(one[key], two[key]), key


def test_read_logs_refuses_a_member_with_different_results_in_two_logs(tmp_path):
    from corp.method.population import Record, member_seeds
    from corp.scale.distributed import read_logs
    header = {"k": 1}
    seeds = member_seeds(3)
    recs = [Record(s, 0.01, 0.5, 0.5, [0.5], [False]) for s in seeds]
    for name, part in (("population.rank0.jsonl", recs[:2]), ("population.rank1.jsonl", recs[2:]),
                       ("population.jsonl", recs)):  # the merged log repeats the rank logs
        (tmp_path / name).write_text("\n".join(json.dumps(x) for x in
                                               [{"header": header}, *(r.__dict__ for r in part)])
                                     + "\n")
    assert sorted(read_logs(str(tmp_path), header)) == sorted(seeds)
    other = {**recs[2].__dict__, "reward": 0.75, "rewards": [0.75]}
    with open(tmp_path / "population.rank0.jsonl", "a") as f:
        f.write(json.dumps(other) + "\n")
    with pytest.raises(ValueError, match=rf"member {seeds[2]} is logged with different results "
                                         rf"at .*population.jsonl:4 and .*population.rank0."
                                         rf"jsonl:4"):
        read_logs(str(tmp_path), header)


def test_a_torchrun_search_stops_when_the_folder_is_being_written(setup, tmp_path):
    from corp.method.population import PopulationLog
    out = tmp_path / "dist"
    with PopulationLog(str(out / "population.jsonl"), {}, defer_header=True):  # another search
        proc = torchrun(setup, out, 16, "inplace", wait=False)
        text = proc.communicate(timeout=300)[0].decode(errors="replace")
    assert proc.returncode != 0
    assert f"being written by another process (pid {os.getpid()} on" in text
    assert not list(out.glob("population.rank*.jsonl"))  # nothing was evaluated
