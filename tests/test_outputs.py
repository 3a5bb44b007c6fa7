"""Output folders committed as a whole (corp.outputs): a process SIGKILLed at any write point of a
commit leaves a run folder where everything that loads is one complete run, and the next commit
puts the last committed run back in place first."""

import json
import os
import subprocess
import sys

import pytest

from corp.outputs import (LOCK, MANIFEST, RECORD, Commit, OutputError, read_json, recover,
                          verify_folder)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("result.json", "adapter", "merged")

# A commit of run `tag`: two folders of two files each and a JSON file, or (with "--no-update")
# the JSON file only, which retires the folders. Imports corp.outputs alone: no torch.
_COMMIT = r"""
import os, sys
from corp.outputs import Commit
out, tag, update = sys.argv[1], sys.argv[2], sys.argv[3] == "update"
with Commit(out, ("result.json", "adapter", "merged"), "test", run_id=tag) as c:
    if update:
        for folder in ("adapter", "merged"):
            path = c.folder(folder)
            for i in range(2):
                with open(os.path.join(path, f"part{i}.bin"), "w") as f:
                    f.write(f"{tag} {folder} {i}")
    c.write_json("result.json", {"tag": tag, "update": update})
"""


def _commit(out, tag, update=True, env=None):
    return subprocess.run([sys.executable, "-c", _COMMIT, str(out), tag,
                           "update" if update else "none"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def _traced_points(tmp_path, update):
    """The write points one commit passes, in order (CORP_TEST_TRACE_POINTS)."""
    out, trace = tmp_path / "traced", tmp_path / "points.txt"
    assert _commit(out, "a").returncode == 0
    env = dict(os.environ, CORP_TEST_TRACE_POINTS=str(trace))
    assert _commit(out, "b", update, env).returncode == 0
    return trace.read_text().split()


def loaded_runs(out) -> dict:
    """What a reader gets for each artifact: its run's tag, or None where it is refused or absent.
    A folder's tag is read from its files as well as its manifest, so a mix would show."""
    got = {}
    try:
        got["result.json"] = read_json(str(out / "result.json"))["tag"]
    except (OutputError, FileNotFoundError):
        got["result.json"] = None
    for folder in ("adapter", "merged"):
        try:
            manifest = verify_folder(str(out / folder), required=True)
        except (OutputError, FileNotFoundError):
            got[folder] = None
            continue
        tags = {(out / folder / name).read_text().split()[0] for name in manifest["files"]}
        assert tags == {manifest["run_id"]}, f"{folder} mixes runs {tags}"
        got[folder] = manifest["run_id"]
    return got


@pytest.mark.parametrize("update", [True, False], ids=["update", "no-update"])
def test_a_kill_at_any_write_point_leaves_one_complete_run(tmp_path, update):
    points = _traced_points(tmp_path, update)
    expected = (["staged:adapter", "staged:merged"] if update else []) + [
        "staged:result.json", "retired:result.json", *(
            ["placed:result.json", "retired:adapter", "placed:adapter", "retired:merged",
             "placed:merged"] if update else
            ["placed:result.json", "retired:adapter", "retired:merged"]),
        "recorded", "cleaned"]
    assert points == expected
    old = {"result.json": "a", "adapter": "a", "merged": "a"}
    new = ({"result.json": "b", "adapter": "b", "merged": "b"} if update else
           {"result.json": "b", "adapter": None, "merged": None})
    for i, point in enumerate(points):
        out = tmp_path / f"kill-{i}"
        assert _commit(out, "a").returncode == 0
        assert loaded_runs(out) == old
        killed = _commit(out, "b", update, dict(os.environ, CORP_TEST_KILL_AT=point))
        assert killed.returncode == -9, (point, killed.stderr)
        committed = i >= points.index("recorded")
        # Before the record is replaced readers get run a, from then on run b: a reader that
        # finds a killed commit's leftovers puts the committed run back first (no commit needed).
        want = new if committed else old
        assert loaded_runs(out) == want, point
        # The next commit first puts back what the record names: then all of a, or all of b.
        recover(str(out), NAMES)
        assert loaded_runs(out) == want, point
        assert not [e for e in os.listdir(out) if e.startswith(".") and e != LOCK], point
        # and a rerun completes normally
        assert _commit(out, "c").returncode == 0
        assert loaded_runs(out) == {"result.json": "c", "adapter": "c", "merged": "c"}


def test_a_run_that_writes_no_update_retires_the_last_ones_artifacts(tmp_path):
    assert _commit(tmp_path, "a").returncode == 0
    assert _commit(tmp_path, "b", update=False).returncode == 0
    assert not (tmp_path / "adapter").exists() and not (tmp_path / "merged").exists()
    record = json.loads((tmp_path / RECORD).read_text())
    assert record["retired"]["adapter"]["run_id"] == "b" and "adapter" not in record["artifacts"]
    with pytest.raises(OutputError, match="run b .*retired it"):
        verify_folder(str(tmp_path / "adapter"))


def test_readers_refuse_a_folder_that_is_not_one_complete_run(tmp_path):
    with Commit(str(tmp_path), ("model",), "test", run_id="r1") as c:
        folder = c.folder("model")
        for name in ("model.safetensors", "config.json"):
            (tmp_path / folder / name).write_text(name)
    model = tmp_path / "model"
    assert verify_folder(str(model))["run_id"] == "r1"
    # A file another run left beside this run's (the single-file checkpoint beside new shards).
    (model / "model-00001-of-00002.safetensors").write_text("old")
    with pytest.raises(OutputError, match=r"not in its manifest \(run r1\)"):
        verify_folder(str(model))
    os.remove(model / "model-00001-of-00002.safetensors")
    (model / "config.json").write_text("changed")
    with pytest.raises(OutputError, match="config.json does not match its manifest"):
        verify_folder(str(model))
    os.remove(model / MANIFEST)
    with pytest.raises(OutputError, match="has no corp_manifest.json"):
        verify_folder(str(model))
    # A folder outside a corp run folder (a user's model) needs no manifest...
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "config.json").write_text("{}")
    assert verify_folder(str(tmp_path / "user")) is None
    # ...unless asked for one.
    with pytest.raises(OutputError, match="has no corp_manifest.json"):
        verify_folder(str(tmp_path / "user"), required=True)


def test_a_failed_command_commits_nothing(tmp_path):
    with Commit(str(tmp_path), NAMES, "test", run_id="a") as c:
        c.write_json("result.json", {"tag": "a"})
    with pytest.raises(RuntimeError, match="evaluation failed"):
        with Commit(str(tmp_path), NAMES, "test", run_id="b") as c:
            c.write_json("result.json", {"tag": "b"})
            raise RuntimeError("evaluation failed")
    assert read_json(str(tmp_path / "result.json"))["tag"] == "a"
    assert sorted(os.listdir(tmp_path)) == [LOCK, RECORD, "result.json"]


def _stage(commit, tag):
    """Stage run `tag`'s artifacts (as _COMMIT does) in `commit`."""
    for folder in ("adapter", "merged"):
        path = commit.folder(folder)
        for i in range(2):
            with open(os.path.join(path, f"part{i}.bin"), "w") as f:
                f.write(f"{tag} {folder} {i}")
    commit.write_json("result.json", {"tag": tag, "update": True})


# Holds a commit of run "held" open on the folder argv[1] until its stdin closes.
_HOLDER = r"""
import sys
from corp.outputs import Commit
c = Commit(sys.argv[1], ("result.json", "adapter", "merged"), "test", run_id="held")
c.write_json("result.json", {"tag": "held"})
print("holding", flush=True)
sys.stdin.read()
"""


def test_a_second_command_on_the_folder_is_refused_naming_the_holder(tmp_path):
    out = str(tmp_path)
    assert _commit(tmp_path, "a").returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, out], cwd=ROOT, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(OutputError, match=rf"is being written by another corp command \(pid "
                                              rf"{holder.pid} on .*\.corp_outputs\.lock"):
            Commit(out, NAMES, "test", run_id="b")
        # the holder's staging is intact: a second command's recovery did not run
        assert os.path.isfile(os.path.join(out, ".result.json.partial-held"))
        assert loaded_runs(tmp_path) == dict.fromkeys(NAMES, "a")
    finally:
        holder.kill()
        holder.wait()
    assert _commit(tmp_path, "c").returncode == 0  # the lock died with its holder
    assert loaded_runs(tmp_path) == dict.fromkeys(NAMES, "c")


def test_a_command_started_mid_commit_cannot_undo_it(tmp_path, monkeypatch):
    import corp.outputs as outputs
    out = str(tmp_path)
    assert _commit(tmp_path, "a").returncode == 0
    first = Commit(out, NAMES, "test", run_id="b")
    _stage(first, "b")
    tried = []

    def start_another(point):  # a second command starts between "placed" and "recorded"
        if point == "placed:merged":
            try:
                Commit(out, NAMES, "test", run_id="c")
                tried.append("started")
            except OutputError as e:
                tried.append(str(e))
    monkeypatch.setattr(outputs, "kill_point", start_another)
    first.commit()
    assert len(tried) == 1 and "being written by another corp command" in tried[0]
    assert loaded_runs(tmp_path) == dict.fromkeys(NAMES, "b")
    monkeypatch.undo()
    assert _commit(tmp_path, "d").returncode == 0  # released at the end of the commit
    assert loaded_runs(tmp_path) == dict.fromkeys(NAMES, "d")


@pytest.mark.parametrize("point", ["retired:result.json", "placed:result.json"])
def test_a_commit_of_other_names_recovers_a_killed_commit(tmp_path, point):
    assert _commit(tmp_path, "a").returncode == 0
    killed = _commit(tmp_path, "b", env=dict(os.environ, CORP_TEST_KILL_AT=point))
    assert killed.returncode == -9, killed.stderr
    # a command that owns other names (as `consolidate --streaming` does not own
    # consolidation.json) commits first: it puts back every name the record manages
    with Commit(str(tmp_path), ("other.json",), "other") as c:
        c.write_json("other.json", {})
    left = [e for e in os.listdir(tmp_path) if e.startswith(".") and e != LOCK]
    assert not left and "committing" not in json.loads((tmp_path / RECORD).read_text())
    assert loaded_runs(tmp_path) == dict.fromkeys(NAMES, "a")


def test_an_artifact_of_an_older_corp_survives_a_killed_commit(tmp_path):
    # an adapter written before corp recorded its outputs: no manifest, no record; it loads
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "w.bin").write_text("old")
    assert verify_folder(str(tmp_path / "adapter")) is None
    for point in ("retired:adapter", "placed:adapter", "placed:merged"):
        killed = _commit(tmp_path, "b", env=dict(os.environ, CORP_TEST_KILL_AT=point))
        assert killed.returncode == -9, killed.stderr
        assert verify_folder(str(tmp_path / "adapter")) is None, point  # put back, and loads
        assert (tmp_path / "adapter" / "w.bin").read_text() == "old"
        recover(str(tmp_path), NAMES)  # and the next commit's recovery keeps it
        assert (tmp_path / "adapter" / "w.bin").read_text() == "old", point
        assert sorted(os.listdir(tmp_path)) == sorted([LOCK, RECORD, "adapter"]), point
    assert _commit(tmp_path, "c").returncode == 0  # a commit that completes replaces it
    assert loaded_runs(tmp_path) == dict.fromkeys(NAMES, "c")


# -- the commands: `corp consolidate` and `corp consolidate --streaming` killed on a rerun ---------

TASK_FILE = """from corp.tasks import AdditionTask
TASK = AdditionTask(n_train=16, n_val=8, n_test=8)
"""
UPDATE_A = {"seeds": [11, 12, 13], "coeffs": [0.02, -0.01, 0.015]}
UPDATE_B = {"seeds": [21, 22], "coeffs": [-0.02, 0.03]}

# `corp consolidate` with CoRP's decision fixed (the update, or null: the gate kept the base), so
# that the test exercises what the command writes, not whether the gate passes on a tiny model.
_CONSOLIDATE = r"""
import importlib, json, sys
from corp.method.perturb import Member
from corp.cli import main
cons = importlib.import_module("corp.method.consolidate")  # the module, not corp.method's function
update = json.loads(sys.argv[1])
def decided(perturber, evaluator, splits, records, config):
    member = update and Member(tuple(update["seeds"]), tuple(update["coeffs"]))
    return cons.ConsolidationResult(member, [], "fixed by the test" if member else "gate: no")
cons.consolidate = decided
sys.exit(main(sys.argv[2:]))
"""


def _consolidate(out, update, kill_at=None, trace=None):
    env = dict(os.environ)
    env.pop("CORP_TEST_KILL_AT", None)
    if kill_at:
        env["CORP_TEST_KILL_AT"] = kill_at
    if trace:
        env["CORP_TEST_TRACE_POINTS"] = str(trace)
    args = ["consolidate", "--task", str(out.parent / "task.py"), "--output-dir", str(out),
            "--population", "2", "--top-k", "1", "--builtin-steps", "10", "--max-rank", "2",
            "--save-exact", "--no-progress", "--log-level", "ERROR"]
    return subprocess.run([sys.executable, "-c", _CONSOLIDATE, json.dumps(update), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _consolidate_here(out, update, trace=None):
    """_consolidate in this process (no kill): the same command, without the start-up cost."""
    import importlib
    from corp.cli import main
    from corp.method.perturb import Member
    cons = importlib.import_module("corp.method.consolidate")
    member = update and Member(tuple(update["seeds"]), tuple(update["coeffs"]))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cons, "consolidate", lambda *args: cons.ConsolidationResult(
            member, [], "fixed by the test" if member else "gate: no"))
        if trace:
            mp.setenv("CORP_TEST_TRACE_POINTS", str(trace))
        return main(["consolidate", "--task", str(out.parent / "task.py"), "--output-dir",
                     str(out), "--population", "2", "--top-k", "1", "--builtin-steps", "10",
                     "--max-rank", "2", "--save-exact", "--no-progress", "--log-level", "ERROR"])


def _weights(folder):
    from corp.models import load_model
    return {k: v.clone() for k, v in load_model(str(folder)).model.state_dict().items()}


def _adapter(folder):
    from safetensors.torch import load_file
    return load_file(str(folder / "adapter_model.safetensors"))


def _which(state, refs) -> str:
    import torch
    found = [tag for tag, ref in refs.items()
             if ref.keys() == state.keys() and all(torch.equal(state[k], ref[k]) for k in ref)]
    assert found, "what loaded is neither run's"
    return found[0]


def _loaded_folders(out, names, refs) -> dict:
    """For each artifact folder: (which run's contents: a tag of `refs`, its manifest's run id),
    or None where the check a reader makes refuses it or it is absent."""
    got = {}
    for name in names:
        try:
            manifest = verify_folder(str(out / name), required=True)
            state = _adapter(out / name) if name == "adapter" else _weights(out / name)
        except (OutputError, FileNotFoundError, ValueError):
            got[name] = None
            continue
        got[name] = (_which(state, {tag: r[name] for tag, r in refs.items()}),
                     manifest["run_id"])
    return got


def cli_loaded_runs(out, refs) -> dict:
    """What each reader gets, as (which update: 'a' or 'b', run id), or None where it is refused
    or absent: consolidation.json through read_json, the adapter through the check `corp eval
    --adapter` makes, the merged checkpoints through load_model, their contents compared with
    each update's."""
    got = {}
    try:
        result = read_json(str(out / "consolidation.json"))
        update = {"seeds": [int(x) for x in result["update"]["seeds"]],
                  "coeffs": result["update"]["coeffs"]}
        assert update in (UPDATE_A, UPDATE_B), update
        got["consolidation.json"] = ("a" if update == UPDATE_A else "b", result["run_id"])
    except (OutputError, FileNotFoundError):
        got["consolidation.json"] = None
    return {**got, **_loaded_folders(out, ("adapter", "merged-lowrank", "merged-exact"), refs)}


def one_run(got) -> tuple | None:
    """The (update, run id) of everything that loaded; fails if two runs' artifacts load."""
    runs = {v for v in got.values() if v is not None}
    assert len(runs) <= 1, f"artifacts of several runs load: {got}"
    return runs.pop() if runs else None


@pytest.fixture(scope="module")
def consolidated(tmp_path_factory):
    """A run folder after `corp consolidate` committed update A; each update's adapter and merged
    weights; the write points a rerun passes."""
    import shutil
    root = tmp_path_factory.mktemp("cli")
    (root / "task.py").write_text(TASK_FILE)
    out = root / "run"
    from corp.cli import main
    assert main(["search", "--task", str(root / "task.py"), "--output-dir", str(out),
                 "--population", "2", "--top-k", "1", "--builtin-steps", "10", "--no-progress",
                 "--log-level", "ERROR"]) == 0
    assert _consolidate_here(out, UPDATE_A) == 0
    done = root / "done-b"
    shutil.copytree(out, done)
    assert _consolidate_here(done, UPDATE_B, trace=root / "points.txt") == 0
    refs = {tag: {"adapter": _adapter(folder / "adapter"),
                  **{n: _weights(folder / n) for n in ("merged-lowrank", "merged-exact")}}
            for tag, folder in (("a", out), ("b", done))}
    return out, refs, (root / "points.txt").read_text().split()


def test_consolidate_passes_every_write_point(consolidated):
    *_, points = consolidated
    names = ("consolidation.json", "adapter", "merged-lowrank", "merged-exact")
    assert points[:3] == ["export:adapter", "export:merged-exact", "export:merged-lowrank"]
    for name in names:
        assert {f"staged:{name}", f"retired:{name}", f"placed:{name}"} <= set(points), name
    assert points[-2:] == ["recorded", "cleaned"]


# Every point of the commit itself is killed in test_a_kill_at_any_write_point_leaves_one_complete_
# run; here the command's own (export) points, one in the middle of the swap, and the record.
@pytest.mark.parametrize("point", ["export:adapter", "placed:adapter", "retired:merged-lowrank",
                                   "recorded"])
def test_consolidate_killed_on_a_rerun_leaves_one_complete_run(consolidated, tmp_path, point):
    import shutil
    out, refs, points = consolidated
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (tmp_path / "task.py").write_text(TASK_FILE)
    names = ("consolidation.json", "adapter", "merged-lowrank", "merged-exact")
    before = one_run(cli_loaded_runs(run, refs))
    assert before[0] == "a"
    killed = _consolidate(run, UPDATE_B, kill_at=point)
    assert killed.returncode == -9, killed.stderr[-3000:]
    committed = points.index(point) >= points.index("recorded")
    # load_model first: it puts back the checkpoint a killed commit had moved aside
    lowrank = {tag: r["merged-lowrank"] for tag, r in refs.items()}
    assert _which(_weights(run / "merged-lowrank"), lowrank) == ("b" if committed else "a")
    got = cli_loaded_runs(run, refs)
    loaded = one_run(got)  # never a mix of the two runs
    assert loaded is not None and (loaded[0] == "b") == committed, got
    if not committed:
        assert loaded == before  # run A's, the very files it committed
    assert got == dict.fromkeys(names, loaded)  # all of it loads, before any command commits
    # The next command that commits puts the committed run back first: all of one run.
    recover(str(run), names)
    assert cli_loaded_runs(run, refs) == dict.fromkeys(names, loaded)


def test_a_rerun_whose_gate_keeps_the_base_retires_the_adapter_and_checkpoints(consolidated,
                                                                                tmp_path):
    import shutil
    out, refs, _ = consolidated
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (tmp_path / "task.py").write_text(TASK_FILE)
    assert _consolidate_here(run, None) == 0
    result = read_json(str(run / "consolidation.json"))
    assert result["update"] is None
    for name in ("adapter", "merged-lowrank", "merged-exact"):
        assert not (run / name).exists(), name
    from corp.models import load_model
    with pytest.raises(ValueError, match=rf"retired it: the gate kept the base model"):
        load_model(str(run / "merged-lowrank"))
    # and the command line says so
    code, err = _corp_eval(run, tmp_path / "task.py", run / "merged-lowrank")
    assert code == 2 and "merged-lowrank' is not a folder: run " in err and "retired it" in err


def test_eval_refuses_a_checkpoint_with_files_of_another_run(consolidated, tmp_path):
    import shutil
    out, refs, _ = consolidated
    run = tmp_path / "run"
    shutil.copytree(out, run)
    (tmp_path / "task.py").write_text(TASK_FILE)
    # the single-file checkpoint of an earlier run beside this run's files
    shutil.copy(run / "merged-lowrank" / "model.safetensors",
                run / "merged-lowrank" / "model-00001-of-00002.safetensors")
    code, err = _corp_eval(run, tmp_path / "task.py", run / "merged-lowrank")
    assert code == 1 and "model-00001-of-00002.safetensors'] are not in its manifest" in err, err


def test_streaming_into_a_consolidated_folder_retires_what_consolidation_json_said_of_its_export(
        consolidated, tmp_path):
    import shutil
    from corp.cli import main
    out, *_ = consolidated
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = read_json(str(run / "consolidation.json"))
    assert before["rank_choice"]["rank"] is not None and "test_reward_lowrank" in before
    # the documented use: export consolidate's gated update again, at another rank, in place
    assert main(["consolidate", "--streaming", "--model", str(run / "base-model"),
                 "--output-dir", str(run), "--update", str(run / "consolidation.json"),
                 "--max-rank", "1", "--no-progress", "--log-level", "ERROR"]) == 0
    streaming = read_json(str(run / "consolidation-streaming.json"))
    assert verify_folder(str(run / "adapter"))["run_id"] == streaming["run_id"]
    after = read_json(str(run / "consolidation.json"))  # the same file, its export fields out
    assert after["update"] == before["update"] and after["run_id"] == before["run_id"]
    assert after["test_reward_exact"] == before["test_reward_exact"]
    assert not {"rank_choice", "layers", "test_reward_lowrank", "truncation_cost_reward"} & \
        set(after)
    assert after["superseded"]["run_id"] == streaming["run_id"]
    assert "rank_choice" in json.loads((run / "consolidation.json").read_text())  # untouched


def _corp_eval(run, task, checkpoint) -> tuple[int, str]:
    """`corp eval --checkpoint` as the program runs it (argv from the command line): its exit
    status and stderr."""
    import contextlib
    import io
    from corp.cli import main
    err = io.StringIO()
    argv = ["corp", "eval", "--task", str(task), "--output-dir", str(run), "--checkpoint",
            str(checkpoint), "--no-progress"]
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", argv)
        with pytest.raises(SystemExit) as exit_:
            main()
    return exit_.value.code, err.getvalue()


# -- `corp consolidate --streaming` ---------------------------------------------------------------

def _streaming_args(model, out, alpha):
    return ["consolidate", "--streaming", "--model", str(model), "--output-dir", str(out),
            "--population", "6", "--top-k", "1", "--max-rank", "2", "--stage1", "0.5", "1",
            str(alpha), "--no-progress", "--log-level", "ERROR"]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    """A tiny model saved as one file and as 4+ shards, a population log for it, and the merged
    checkpoint of the two-pass merge at alpha 1 (run A) and alpha 2 (run B)."""
    import shutil
    from corp.cli import main
    from corp.method.perturb import PerturbationSpec, Perturber
    from corp.method.population import Record, member_seeds, model_fingerprint
    from corp.models import build_tiny_model, save_model
    root = tmp_path_factory.mktemp("streaming")
    loaded = build_tiny_model("llama", seed=3)
    save_model(loaded, str(root / "single"))
    loaded.model.save_pretrained(str(root / "sharded"), max_shard_size="100KB")
    loaded.codec.save(str(root / "sharded"))
    shards = sorted(p.name for p in (root / "sharded").glob("*.safetensors"))
    assert len(shards) >= 4, shards
    params = Perturber(loaded.model, PerturbationSpec()).params
    header = {"model": "tiny", "parameters": [n for n, _ in params], "sigmas": [1e-3],
              "population_seed": 0, "fingerprint": model_fingerprint(params)}
    out = root / "run"
    out.mkdir()
    with open(out / "population.jsonl", "w") as f:
        f.write(json.dumps({"header": header}) + "\n")
        for i, seed in enumerate(member_seeds(6, 0)):
            rec = Record(seed, 1e-3, float(i % 4), 0.0, [float(i % 4)], [False])
            f.write(json.dumps(rec.__dict__) + "\n")
    assert main(_streaming_args(root / "sharded", out, 1)) == 0
    done = root / "done-b"
    shutil.copytree(out, done)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CORP_TEST_TRACE_POINTS", str(root / "points.txt"))
        assert main(_streaming_args(root / "sharded", done, 2)) == 0
    refs = {tag: {"adapter": _adapter(folder / "adapter"),
                  "merged-lowrank": _weights(folder / "merged-lowrank")}
            for tag, folder in (("a", out), ("b", done))}
    return root, out, refs, (root / "points.txt").read_text().split(), len(shards)


def streamed_runs(out, refs) -> dict:
    got = {}
    try:
        result = read_json(str(out / "consolidation-streaming.json"))
        got["consolidation-streaming.json"] = ("a" if "alpha=1.0" in result["update"] else "b",
                                               result["run_id"])
    except (OutputError, FileNotFoundError):
        got["consolidation-streaming.json"] = None
    return {**got, **_loaded_folders(out, ("adapter", "merged-lowrank"), refs)}


def test_streaming_killed_between_shards_on_a_rerun_leaves_one_complete_run(streamed, tmp_path):
    import shutil
    root, out, refs, points, shards = streamed
    assert [f"merged:shard-{i}" for i in range(1, shards + 1)] == \
        [p for p in points if p.startswith("merged:shard-")]
    run = tmp_path / "run"
    shutil.copytree(out, run)
    before = one_run(streamed_runs(run, refs))
    assert before[0] == "a"
    env = dict(os.environ, CORP_TEST_KILL_AT="merged:shard-2")
    killed = subprocess.run([sys.executable, "-m", "corp",
                             *_streaming_args(root / "sharded", run, 2)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert one_run(streamed_runs(run, refs)) == before  # shards 1-2 of B are not loaded with A's
    recover(str(run), ("consolidation-streaming.json", "adapter", "merged-lowrank"))
    assert streamed_runs(run, refs) == dict.fromkeys(
        ("consolidation-streaming.json", "adapter", "merged-lowrank"), before)


def test_a_sharded_checkpoint_replaces_a_single_file_one(streamed, tmp_path):
    from corp.cli import main
    root, out, refs, *_ = streamed
    run = tmp_path / "run"
    run.mkdir()
    (run / "population.jsonl").write_bytes((out / "population.jsonl").read_bytes())
    assert main(_streaming_args(root / "single", run, 1)) == 0
    assert "model.safetensors" in os.listdir(run / "merged-lowrank")
    assert main(_streaming_args(root / "sharded", run, 2)) == 0
    assert not (run / "merged-lowrank" / "model.safetensors").exists()
    assert one_run(streamed_runs(run, refs))[0] == "b"
