"""Population search log: resume after interruption, truncated lines, foreign logs; the ensemble."""

import json

import numpy as np
import pytest
import torch

from corp.method.ensemble import majority_vote, top_k
from corp.models import build_tiny_model
from corp.method.perturb import PerturbationSpec, Perturber
from corp.method.population import PopulationLog, member_seeds, member_sigma, search
from corp_helpers import PLANTED_PARAM, PlantedTask


class Interrupt(Exception):
    pass


class CountingTask(PlantedTask):
    """Counts evaluations per member projection and can die after a number of them."""

    def __init__(self, *args, die_after=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls, self.die_after = 0, die_after

    def __call__(self, model, examples):
        if self.die_after is not None and self.calls >= self.die_after:
            raise Interrupt
        self.calls += 1
        return super().__call__(model, examples)


def setup(die_after=None):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    return pert, CountingTask(lm.model, scale=0.01, die_after=die_after)


def run(pert, task, path, n=10):
    return search(pert, task, task.splits()["train"], member_seeds(n), [0.01, 0.02], str(path),
                  {"k": 1}, mode="inplace", progress=False)


def test_resume_never_loses_or_repeats_work(tmp_path):
    path = tmp_path / "pop.jsonl"
    pert, task = setup(die_after=4)
    with pytest.raises(Interrupt):
        run(pert, task, path)
    assert len(PopulationLog(str(path), {"k": 1}).records) == 4
    pert2, task2 = setup()
    resumed = run(pert2, task2, path)
    assert task2.calls == 6  # only the missing members
    pert3, fresh_task = setup()
    fresh = run(pert3, fresh_task, tmp_path / "fresh.jsonl")
    assert [(r.seed, r.reward, r.rewards) for r in resumed] == \
        [(r.seed, r.reward, r.rewards) for r in fresh]
    lines = path.read_text().splitlines()
    assert len(lines) == 11 and len({json.loads(x).get("seed") for x in lines[1:]}) == 10


def test_truncated_last_line_is_dropped_and_reevaluated(tmp_path):
    path = tmp_path / "pop.jsonl"
    pert, task = setup()
    run(pert, task, path, n=3)
    text = path.read_text()
    path.write_text(text[:-20])  # a kill in the middle of writing the last member
    pert2, task2 = setup()
    records = run(pert2, task2, path, n=3)
    assert task2.calls == 1 and len(records) == 3
    assert len(path.read_text().splitlines()) == 4


def test_log_from_another_search_is_refused(tmp_path):
    path = tmp_path / "pop.jsonl"
    PopulationLog(str(path), {"model": "a"})
    with pytest.raises(ValueError, match="different search"):
        PopulationLog(str(path), {"model": "b"})


def test_member_seeds_and_sigmas_are_stable():
    assert member_seeds(5) == member_seeds(8)[:5]
    assert len(set(member_seeds(1000))) == 1000
    assert member_seeds(3, 1) != member_seeds(3, 0)
    sig = [member_sigma(s, [1e-3, 2e-3, 5e-4]) for s in member_seeds(300)]
    assert set(sig) == {1e-3, 2e-3, 5e-4}
    with pytest.raises(ValueError, match="population size"):
        member_seeds(0)


def test_majority_vote_and_top_k():
    votes = majority_vote([["1", "2", None], ["3", "2", None], ["3", "4", "5"]])
    assert votes == ["3", "2", "5"]
    assert majority_vote([["a"], ["b"]]) == ["a"]  # tie -> the better-ranked member
    from corp.method.population import Record
    recs = [Record(i, 0.01, r, r, [r], [False]) for i, r in enumerate([0.1, 0.5, 0.5, 0.2])]
    assert [r.seed for r in top_k(recs, 3)] == [1, 2, 3]
    with pytest.raises(ValueError, match="K must be"):
        top_k(recs, 5)
    with pytest.raises(ValueError, match="empty"):
        top_k([], 1)
    assert np.isclose(top_k(recs, 1)[0].reward, 0.5)
    # A NaN sorts anywhere: before, top_k of [0, 0.9, NaN, 0.95, 0.8] gave seeds [0, 1, 2].
    nan_recs = [Record(i, 0.01, r, r, [r], [False])
                for i, r in enumerate([0.0, 0.9, float("nan"), 0.95, 0.8])]
    with pytest.raises(ValueError, match="NaN or infinite reward .seed 2"):
        top_k(nan_recs, 3)


# -- the log as a small database (issue 13) ------------------------------------------------------

from corp.evaluate import TextEvaluator  # noqa: E402
from corp.method.population import (PopulationLogError, Record, model_fingerprint,  # noqa: E402
                                    read_log, read_records)
from corp.tasks import AdditionTask, Example  # noqa: E402


def _logged(tmp_path, n=4):
    """A finished search's log (header {"k": 1}) and its lines."""
    path = tmp_path / "pop.jsonl"
    pert, task = setup()
    run(pert, task, path, n=n)
    return path, path.read_text().splitlines()


_HOLDER = r"""
import sys, time
from corp.method.population import PopulationLog
log = PopulationLog(sys.argv[1], {"k": 1})
print("holding", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    import subprocess
    import sys
    path = tmp_path / "pop.jsonl"
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        pert, task = setup()
        with pytest.raises(ValueError, match=rf"being written by another process \(pid "
                                             rf"{holder.pid} on "):
            run(pert, task, path, n=3)
        assert task.calls == 0  # refused before evaluating anything
        assert len(path.read_text().splitlines()) == 1  # the holder's header, nothing else
    finally:
        holder.kill()
        holder.wait()
    assert len(run(pert, task, path, n=3)) == 3  # the lock died with its holder


def test_a_writer_holds_the_log_until_closed(tmp_path):
    path = tmp_path / "pop.jsonl"
    with PopulationLog(str(path), {"k": 1}):
        with pytest.raises(PopulationLogError, match="another process"):
            PopulationLog(str(path), {"k": 1})
        assert read_records(str(path), {"k": 1}) == {}  # readers need no lock
    PopulationLog(str(path), {"k": 1}).close()


def _start_log(path, start_at, results):
    import time
    while time.time() < start_at:
        pass
    try:
        with PopulationLog(path, {"k": 1}):
            time.sleep(0.3)
        results.put("ok")
    except PopulationLogError:
        results.put("refused")


def test_new_logs_started_at_once_write_one_header(tmp_path):
    import multiprocessing
    import time
    ctx = multiprocessing.get_context("fork")
    for attempt in range(4):
        path = str(tmp_path / f"race{attempt}.jsonl")
        results = ctx.Queue()
        start_at = time.time() + 0.3
        procs = [ctx.Process(target=_start_log, args=(path, start_at, results))
                 for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(30)
        outcomes = sorted(results.get(timeout=5) for _ in procs)
        assert outcomes == ["ok", "refused", "refused"], outcomes
        with open(path) as f:
            assert f.read().count('"header"') == 1


class NaNTask(CountingTask):
    """Like CountingTask, but its reward is NaN on the third train example."""

    def __call__(self, model, examples):
        scores = super().__call__(model, examples)
        scores.rewards[2] = np.nan
        return scores


def test_a_nan_reward_stops_the_search_naming_the_task_and_prompt(tmp_path):
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(parameters=(PLANTED_PARAM,)))
    task = NaNTask(lm.model, scale=0.01)
    path = tmp_path / "pop.jsonl"
    with pytest.raises(ValueError, match=r"'NaNTask' gave reward nan to train example 2 "
                                         r"\(prompt 'train2'\)"):
        run(pert, task, path)
    assert len(path.read_text().splitlines()) == 1  # nothing logged


class NaNAddition(AdditionTask):
    name = "nan-add"

    def score(self, answer, example):
        return float("nan") if example.prompt == "2+2=" else super().score(answer, example)


def test_text_evaluator_refuses_a_nan_reward_naming_the_task_and_prompt():
    evaluator = TextEvaluator(NaNAddition(), codec=None)
    examples = [Example("1+1=", "2"), Example("2+2=", "4")]
    assert evaluator.score_completions(["2", "4"], examples[:1]).reward == 1.0
    with pytest.raises(ValueError, match=r"task 'nan-add' gave reward nan to the answer '4' for "
                                         r"prompt '2\+2='"):
        evaluator.score_completions(["2", "4"], examples)
    with pytest.raises(ValueError, match="'2\\+2='"):  # the vote's answers too
        evaluator.score_answers(["2", "4"], examples)


def test_a_nan_reward_in_an_old_log_is_an_error_naming_the_line(tmp_path):
    path, lines = _logged(tmp_path)
    rec = json.loads(lines[2])
    rec["reward"] = float("nan")  # json writes NaN, as the old corp did
    path.write_text("\n".join(lines[:2] + [json.dumps(rec)] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=rf"pop.jsonl:3: member {rec['seed']} has a NaN or "
                                         rf"infinite reward"):
        read_log(str(path))


def test_a_seed_logged_twice_with_other_rewards_is_an_error(tmp_path):
    path, lines = _logged(tmp_path)
    path.write_text("\n".join(lines + [lines[1]]) + "\n")  # the same record again: tolerated
    assert len(read_log(str(path))[1]) == 4
    rec = json.loads(lines[1])
    rec["reward"], rec["rewards"][0] = 0.987, 0.5
    path.write_text("\n".join(lines + [json.dumps(rec)]) + "\n")
    with pytest.raises(ValueError, match=rf"member {rec['seed']} is logged twice with different "
                                         rf"results \(lines 2 and 6\)"):
        read_log(str(path))
    with pytest.raises(ValueError, match="lines 2 and 6"):  # a resumed search too
        run(*setup(), path, n=4)
    log = PopulationLog(str(tmp_path / "new.jsonl"), {"k": 1})
    log.add(Record(**json.loads(lines[1])))
    log.add(Record(**json.loads(lines[1])))  # the same again: a no-op
    with pytest.raises(ValueError, match="already logged with another result"):
        log.add(Record(**rec))
    log.close()


def test_a_corrupt_line_is_an_error_naming_file_and_line(tmp_path):
    path, lines = _logged(tmp_path)
    path.write_text("\n".join(lines[:3] + ['{"seed": 1, "sigma": oops}'] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"pop.jsonl:4: not a JSON line \(Expecting value at "
                                         r"column 22\)\. Delete that line"):
        read_log(str(path))
    path.write_text("\n".join(lines[:3] + ['{"seed": 1}'] + lines[3:]) + "\n")
    with pytest.raises(ValueError, match=r"pop.jsonl:4: not a member record"):
        read_log(str(path))
    path.write_text("garbage\n" + "\n".join(lines[1:]) + "\n")
    with pytest.raises(ValueError, match=r"pop.jsonl:1: the header line is damaged"):
        read_log(str(path))
    path.write_text("\n".join(lines) + "\n" + lines[1][:30])  # a truncated last line: repaired
    assert len(read_log(str(path))[1]) == 4 and read_log(str(path))[2]


def test_a_record_of_another_search_is_an_error_naming_the_line(tmp_path):
    path = tmp_path / "pop.jsonl"
    header = {"sigmas": [0.01, 0.02], "train": ["a", "b"]}
    seed = member_seeds(1)[0]
    right = Record(seed, member_sigma(seed, [0.01, 0.02]), 0.5, 0.5, [0.0, 1.0], [False, True])
    lines = [json.dumps({"header": header}), json.dumps(right.__dict__)]
    path.write_text("\n".join(lines + [json.dumps({**right.__dict__, "seed": 7, "sigma": 0.5})])
                    + "\n")
    with pytest.raises(ValueError, match=r"pop.jsonl:3: member 7 has sigma 0.5, but this search "
                                         r"draws"):
        read_log(str(path))
    other = {**right.__dict__, "seed": 7, "sigma": member_sigma(7, [0.01, 0.02]), "rewards": [1.0]}
    path.write_text("\n".join(lines + [json.dumps(other)]) + "\n")
    with pytest.raises(ValueError, match=r"pop.jsonl:3: member 7 has 1 rewards for 2 train"):
        read_log(str(path))


def test_the_header_fingerprint_refuses_another_model(tmp_path, caplog):
    wide, narrow = build_tiny_model("llama", hidden=64), build_tiny_model("llama", hidden=32)
    spec = PerturbationSpec()
    header_of = lambda lm: {"model": "m", "fingerprint": model_fingerprint(  # noqa: E731
        Perturber(lm.model, spec).params)}
    fp = header_of(wide)["fingerprint"]
    assert len(fp["sha256"]) == 16 and fp["parameters"][0][2] == "float32"
    assert [p[0] for p in fp["parameters"]] == [n for n, _ in Perturber(wide.model, spec).params]
    path = str(tmp_path / "pop.jsonl")
    PopulationLog(path, header_of(wide)).close()
    PopulationLog(path, header_of(wide)).close()  # the same model: accepted
    with pytest.raises(ValueError, match=r"different search \(14 parameters have other shapes: "
                                         r"model.layers.0.self_attn.q_proj.weight \[64, 64\] in "
                                         r"the log, \[32, 32\] in the model"):
        PopulationLog(path, header_of(narrow))
    with pytest.raises(ValueError, match="other shapes"):
        read_records(path, header_of(narrow))
    old = str(tmp_path / "old.jsonl")  # written before fingerprints: accepted with a warning
    PopulationLog(old, {"model": "m"}).close()
    with caplog.at_level("WARNING", logger="corp"):
        PopulationLog(old, header_of(narrow)).close()
    assert "no model fingerprint" in caplog.text
    with pytest.raises(ValueError, match=r"model: 'm' in the log, 'n' now"):
        PopulationLog(old, {**header_of(narrow), "model": "n"})


def _log_with_members(path, header, n=3):
    with PopulationLog(str(path), header) as pop_log:
        for seed in member_seeds(n):
            pop_log.add(Record(seed, member_sigma(seed, header["sigmas"]), 0.5, 0.5, [0.5],
                               [True]))


def test_another_dtype_or_a_moved_model_folder_only_warns(tmp_path, caplog):
    from corp.method.population import fingerprint
    bf16, fp32 = (fingerprint([("w", (4, 4), dtype)]) for dtype in (torch.bfloat16,
                                                                    torch.float32))
    header = {"model": "/models/m", "sigmas": [0.01], "train": ["a"], "fingerprint": bf16}
    path = tmp_path / "pop.jsonl"
    _log_with_members(path, header)  # a search run in bfloat16
    # consolidated in float32 (the noise depends on names and shapes only)
    with caplog.at_level("WARNING", logger="corp"):
        assert len(read_records(str(path), {**header, "fingerprint": fp32})) == 3
        PopulationLog(str(path), {**header, "fingerprint": fp32}).close()
    assert "w bfloat16 in the log, float32 in the model" in caplog.text
    # the model folder moved (or reached through a link): the fingerprint still matches
    caplog.clear()
    with caplog.at_level("WARNING", logger="corp"):
        assert len(read_records(str(path), {**header, "model": "/elsewhere/m"})) == 3
    assert "model: '/models/m' in the log, '/elsewhere/m' now" in caplog.text
    # other shapes are another model, wherever it lies
    wide = fingerprint([("w", (8, 4), torch.bfloat16)])
    with pytest.raises(PopulationLogError, match=r"different search \(1 parameters have other "
                                                 r"shapes"):
        read_records(str(path), {**header, "model": "/elsewhere/m", "fingerprint": wide})
    # a name that is not a folder's path still names the model
    with pytest.raises(PopulationLogError, match="model: '/models/m' in the log, 'tiny' now"):
        read_records(str(path), {**header, "model": "tiny"})


def test_a_complete_last_line_without_its_newline_is_kept(tmp_path):
    path = tmp_path / "pop.jsonl"
    pert, task = setup()
    run(pert, task, path, n=3)
    # a user deleted a line with an editor that drops the file's final newline
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2] + lines[3:]))
    header, records, partial = read_log(str(path))
    assert len(records) == 2 and not partial
    pert2, task2 = setup()
    assert len(run(pert2, task2, path, n=3)) == 3
    assert task2.calls == 1  # the deleted member only; the last line was kept
    text = path.read_text()
    assert text.endswith("\n") and len(text.splitlines()) == 4
    assert len(read_log(str(path))[1]) == 3
