"""Population search log: resume after interruption, truncated lines, foreign logs; the ensemble."""

import contextlib
import json
import os
import re

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


# -- the log's checks, message by message (each names the file, the line and what differs) ------

def _fp(*entries):
    from corp.method.population import fingerprint
    return fingerprint(entries)


def test_the_fingerprint_hash_is_a_known_answer():
    # the header's hash is what two logs are compared by: it is the first 16 hex digits of the
    # SHA-256 of the compact JSON of [[name, shape, dtype], ...] (checked with sha256sum)
    fp = _fp(("w", (4, 4), torch.float32), ("b", (4,), "bfloat16"))
    assert fp == {"sha256": "b2360a0e93d25cb6",
                  "parameters": [["w", [4, 4], "float32"], ["b", [4], "bfloat16"]]}


def test_fingerprint_differences_name_each_kind_of_difference():
    from corp.method.population import fingerprint_differences
    f32 = torch.float32
    logged = _fp(("a", (2,), f32), ("b", (2,), f32), ("c", (3,), f32), ("d", (3,), f32))
    actual = _fp(("b", (2,), f32), ("c", (4,), f32), ("d", (5,), torch.bfloat16),
                 ("e", (1,), f32))
    assert fingerprint_differences(logged, actual) == [
        "1 logged parameters are not in the model, e.g. ['a']",
        "1 of the model's parameters are not in the log, e.g. ['e']",
        "2 parameters have other shapes: c [3] in the log, [4] in the model; "
        "d [3] in the log, [5] in the model",
        "1 parameters have other dtypes: d float32 in the log, bfloat16 in the model"]
    assert fingerprint_differences(logged, actual, dtypes=False)[-1].startswith("2 parameters")
    # two dtype differences are joined like the shapes
    assert fingerprint_differences(_fp(("x", (1,), f32), ("y", (1,), f32)),
                                   _fp(("x", (1,), torch.bfloat16), ("y", (1,), torch.float16))
                                   ) == ["2 parameters have other dtypes: x float32 in the log, "
                                         "bfloat16 in the model; y float32 in the log, float16 "
                                         "in the model"]
    # at most `limit` examples, 3 by default
    many = _fp(*[(f"p{i}", (1,), f32) for i in range(6)])
    assert fingerprint_differences(many, _fp()) == [
        "6 logged parameters are not in the model, e.g. ['p0', 'p1', 'p2']"]
    assert fingerprint_differences(many, _fp(), limit=1) == [
        "6 logged parameters are not in the model, e.g. ['p0']"]
    # the same parameters in another order; and the same fingerprint: nothing
    swapped = _fp(("b", (2,), f32), ("a", (2,), f32), ("c", (3,), f32), ("d", (3,), f32))
    assert fingerprint_differences(logged, swapped) == [
        "the parameters are listed in another order"]
    assert fingerprint_differences(logged, dict(logged)) == []
    # a fingerprint without its parameter list (hand-edited): every parameter is new
    assert fingerprint_differences({"sha256": "0" * 16}, _fp(("a", (2,), f32))) == [
        "1 of the model's parameters are not in the log, e.g. ['a']"]
    assert fingerprint_differences(_fp(("a", (2,), f32)), {"sha256": "0" * 16}) == [
        "1 logged parameters are not in the model, e.g. ['a']"]
    # ... or without its hash: the parameters are still compared, whichever side lacks it
    two, three = _fp(("a", (2,), f32)), _fp(("a", (3,), f32))
    assert fingerprint_differences({"parameters": two["parameters"]}, three) == [
        "1 parameters have other shapes: a [2] in the log, [3] in the model"]
    assert fingerprint_differences(two, {"parameters": three["parameters"]}) == [
        "1 parameters have other shapes: a [2] in the log, [3] in the model"]


def _refusal(found, expected):
    from corp.method.population import check_header
    with pytest.raises(PopulationLogError) as e:
        check_header("/runs/pop.jsonl", found, expected)
    message = str(e.value)
    prefix, _, rest = message.partition(" was written by a different search (")
    assert prefix == "/runs/pop.jsonl", message
    return rest.rpartition("); use another --output-dir")[0]


def test_check_header_names_every_difference():
    base = {"model": "m", "sigmas": [0.01], "task": "math"}
    # a key on one side only
    assert _refusal(base, {**base, "extra": 1}) == "extra: '(absent)' in the log, 1 now"
    assert _refusal({**base, "extra": 1}, base) == "extra: 1 in the log, '(absent)' now"
    # keys are compared in sorted order, all of them (an equal key does not end the comparison)
    assert _refusal(base, {**base, "task": "code", "sigmas": [0.02]}) == (
        "sigmas: [0.01] in the log, [0.02] now; task: 'math' in the log, 'code' now")
    # short lists in full; long ones (more than 8 entries together) by length and first difference
    assert _refusal({"train": [1, 2]}, {"train": [1, 3]}) == (
        "train: [1, 2] in the log, [1, 3] now")
    assert _refusal({"train": [1, 2, 3, 4]}, {"train": [1, 2, 3, 5]}) == (
        "train: [1, 2, 3, 4] in the log, [1, 2, 3, 5] now")  # 8 entries together: in full
    assert _refusal({"train": [1, 2, 3, 4, 5]}, {"train": [1, 2, 3, 4]}) == (
        "train: 5 entries in the log, 4 now, the first difference at index 4")
    assert _refusal({"train": [0, 1, 2, 9, 4]}, {"train": [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}) == (
        "train: 5 entries in the log, 10 now, the first difference at index 3")
    assert _refusal({"train": "abcdefghij"}, {"train": list("abcdefghij")}) == (
        "train: 'abcdefghij' in the log, ['a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i', 'j'] now")
    # a log with a fingerprint, a caller without one
    fp = _fp(("w", (4, 4), torch.float32))
    assert _refusal({**base, "fingerprint": fp}, base) == (
        "the log has a model fingerprint, this caller none")
    # a header difference and a shape difference: both named
    wide = _fp(("w", (8, 4), torch.float32))
    assert _refusal({**base, "fingerprint": fp}, {**base, "task": "code", "fingerprint": wide}) == (
        "task: 'math' in the log, 'code' now; "
        "1 parameters have other shapes: w [4, 4] in the log, [8, 4] in the model")
    # a moved model folder does not end the comparison of the keys after "model"
    assert _refusal({"model": "/a/m", "sigmas": [0.01], "fingerprint": fp},
                    {"model": "/b/m", "sigmas": [0.02], "fingerprint": fp}) == (
        "sigmas: [0.01] in the log, [0.02] now")


def test_check_header_warnings_name_the_log_and_come_only_when_due(caplog):
    from corp.method.population import check_header
    fp32 = _fp(("w", (4, 4), torch.float32))
    bf16 = _fp(("w", (4, 4), torch.bfloat16))
    path = "/runs/pop.jsonl"
    with caplog.at_level("WARNING", logger="corp"):
        check_header(path, {"model": "m", "fingerprint": fp32}, {"model": "m", "fingerprint": fp32})
        check_header(path, {"model": "m"}, {"model": "m"})  # neither has a fingerprint
    assert caplog.records == []
    with caplog.at_level("WARNING", logger="corp"):  # a moved folder and another dtype: both
        check_header(path, {"model": "/a/m", "fingerprint": bf16},
                     {"model": "/b/m", "fingerprint": fp32})
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: model: '/a/m' in the log, '/b/m' now (the same parameter names and shapes: the "
        f"logged rewards are those of the model at '/a/m')",
        f"{path}: 1 parameters have other dtypes: w bfloat16 in the log, float32 in the model"]
    caplog.clear()
    with caplog.at_level("WARNING", logger="corp"):
        check_header(path, {"model": "m"}, {"model": "m", "fingerprint": fp32})
    assert [r.getMessage() for r in caplog.records] == [
        f"{path} has no model fingerprint (written before corp recorded one): its model, task and "
        f"parameter names match, but the parameters' shapes and dtypes cannot be checked"]


_HEADER = {"sigmas": [0.01, 0.02], "train": ["a", "b"]}


def _one_member_log(path, *more: dict | list) -> Record:
    """Write a log of the search _HEADER with one good member, then `more` as further lines;
    return the member's record."""
    seed = member_seeds(1)[0]
    good = Record(seed, member_sigma(seed, [0.01, 0.02]), 0.5, 0.5, [0.0, 1.0], [False, True])
    path.write_text("".join(json.dumps(x) + "\n" for x in ({"header": _HEADER}, good.__dict__,
                                                            *more)))
    return good


def _log_lines_with(tmp_path, bad: dict | list):
    """A log of one good member and `bad` as its third line."""
    path = tmp_path / "pop.jsonl"
    return str(path), _one_member_log(path, bad)


def _damage(tmp_path, bad) -> str:
    path, _ = _log_lines_with(tmp_path, bad)
    with pytest.raises(PopulationLogError) as e:
        read_log(path)
    message = str(e.value)
    assert message.startswith(f"{path}:3: "), message
    return message[len(f"{path}:3: "):].partition(". Delete that line")[0]


def test_damaged_records_are_named_by_file_line_and_fault(tmp_path):
    _, good = _log_lines_with(tmp_path, [])
    fields = sorted(good.__dict__)
    assert _damage(tmp_path, {"seed": 1}) == (
        f"not a member record (fields ['seed'], expected {fields})")
    assert _damage(tmp_path, [1, 2]) == f"not a member record (fields list, expected {fields})"
    assert _damage(tmp_path, {**good.__dict__, "seed": "7"}) == "seed '7' is not an integer"
    assert _damage(tmp_path, {**good.__dict__, "seed": True}) == "seed True is not an integer"
    assert _damage(tmp_path, {**good.__dict__, "seed": 5, "reward": "high"}) == (
        "member 5 has a reward that is not a number")
    assert _damage(tmp_path, {**good.__dict__, "seed": 5, "rewards": [0.0, None]}) == (
        "member 5 has a reward that is not a number")
    other = 0.02 if member_sigma(5, [0.01, 0.02]) == 0.01 else 0.01
    assert _damage(tmp_path, {**good.__dict__, "seed": 5, "sigma": other}) == (
        f"member 5 has sigma {other}, but this search draws {member_sigma(5, [0.01, 0.02])} for "
        f"it: the line comes from another search")


def test_the_sigma_a_search_draws_is_named_for_the_lines_seed(tmp_path):
    # among 100 sigmas, the one named is the seed's own (another seed's would rarely coincide)
    sigmas = [round(0.001 * k, 3) for k in range(1, 101)]
    header = {"sigmas": sigmas, "train": ["a"]}
    path = tmp_path / "pop.jsonl"
    line = {"seed": 5, "sigma": 7.0, "reward": 0.5, "accuracy": 0.5, "rewards": [0.5],
            "correct": [False]}
    path.write_text(json.dumps({"header": header}) + "\n" + json.dumps(line) + "\n")
    with pytest.raises(PopulationLogError, match=rf"but this search draws "
                                                 rf"{member_sigma(5, sigmas)} for it"):
        read_log(str(path))


def test_read_records_names_the_log_it_refuses(tmp_path):
    log_path = tmp_path / "named.jsonl"
    rec = _one_member_log(log_path)
    with pytest.raises(PopulationLogError, match=rf"^{log_path} was written by a different "
                                                 rf"search \(sigmas: "):
        read_records(str(log_path), {**_HEADER, "sigmas": [0.03]})
    assert read_records(str(log_path), _HEADER) == {rec.seed: rec}


def test_a_truncated_last_line_is_cut_exactly_and_named(tmp_path, caplog):
    header = {"sigmas": [0.01], "train": ["a"]}
    path = str(tmp_path / "pop.jsonl")
    _log_with_members(path, header, n=2)
    with open(path) as f:
        whole = f.read()
    with open(path, "a") as f:
        f.write('{"seed": 12, "sig')  # killed mid-write
    with caplog.at_level("WARNING", logger="corp"):
        PopulationLog(path, header).close()
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: dropping a truncated last line (interrupted write)"]
    with open(path) as f:
        assert f.read() == whole  # the complete lines, byte for byte


def test_a_record_keeps_every_score_of_its_member():
    from corp.evaluate import Scores
    scores = Scores(np.array([1.0, 0.25, 0.0, 1.0]), np.array([True, False, False, True]),
                    ["7", None, "1", "7"])
    rec = Record.from_scores(11, 0.02, scores)
    assert rec == Record(11, 0.02, 0.5625, 0.5, [1.0, 0.25, 0.0, 1.0],
                         [True, False, False, True])
    assert [type(c) for c in rec.correct] == [bool] * 4  # JSON-serializable, not numpy bools
    assert type(rec.rewards[0]) is float


def test_odd_but_readable_logs(tmp_path):
    path = tmp_path / "pop.jsonl"
    # a header alone whose newline was lost: read, empty, nothing partial
    path.write_text(json.dumps({"header": _HEADER}))
    assert read_log(str(path)) == (_HEADER, [], False)
    # a complete log: `partial` is False itself, not merely falsy
    rec = _one_member_log(path)
    found, records, partial = read_log(str(path))
    assert records == [rec] and partial is False


def test_unreadable_lines_are_named_by_file_line_and_fault(tmp_path):
    path = tmp_path / "pop.jsonl"
    lines = [json.dumps({"header": {"k": 1}}).encode()]
    path.write_bytes(b"\n".join(lines + [b'{"seed": "\xff\xfe"}']) + b"\n")
    with pytest.raises(PopulationLogError) as e:
        read_log(str(path))
    assert str(e.value).startswith(f"{path}:2: not a JSON line (not UTF-8 text). Delete that line")
    for first in ({"seed": 1}, [1, 2], {"header": [1]}):  # JSON, but not a header
        path.write_text(json.dumps(first) + "\n")
        with pytest.raises(PopulationLogError) as e:
            read_log(str(path))
        assert str(e.value) == (f"{path}:1: the first line is not a population log header; is "
                                f"this a population log?")


def test_the_writer_names_its_log_in_every_refusal(tmp_path):
    path = str(tmp_path / "pop.jsonl")
    PopulationLog(path, {"k": 1}).close()
    with pytest.raises(PopulationLogError) as e:
        PopulationLog(path, {"k": 2})
    assert str(e.value).startswith(f"{path} was written by a different search (k: 1 in the log, "
                                   f"2 now)")
    pop_log = PopulationLog(path, {"k": 1})
    bad = Record(5, 0.01, float("inf"), 0.5, [1.0], [True])
    with pytest.raises(PopulationLogError) as e:
        pop_log.add(bad)
    assert str(e.value) == f"member 5: NaN or infinite reward, not logged to {path}"
    pop_log.close()
    with pytest.raises(PopulationLogError) as e:
        pop_log.add(Record(5, 0.01, 0.5, 0.5, [1.0], [True]))
    assert str(e.value) == f"{path} is closed"


def test_a_deferred_header_is_written_with_the_first_record(tmp_path):
    path = str(tmp_path / "pop.jsonl")
    header = {"sigmas": [0.01], "train": ["a"]}
    seeds = member_seeds(2)
    recs = [Record(s, member_sigma(s, [0.01]), 0.5, 0.5, [0.5], [False]) for s in seeds]
    with PopulationLog(path, header, defer_header=True) as pop_log:
        assert not os.path.exists(path)  # nothing yet: a run that fails early leaves no log
        pop_log.add(recs[0])
        pop_log.add(recs[1])
        with open(path) as f:  # flushed line by line, the header first
            assert f.read().splitlines() == [json.dumps({"header": header}),
                                             json.dumps(recs[0].__dict__),
                                             json.dumps(recs[1].__dict__)]
    assert read_log(path) == (header, recs, False)


def test_check_rewards_refuses_any_non_finite_reward_naming_five_members():
    from corp.method.population import check_rewards
    with pytest.raises(ValueError, match=r"^the population is empty: run `corp search` first$"):
        check_rewards([])
    fine = Record(1, 0.01, 0.5, 0.5, [0.0, 1.0], [False, True])
    check_rewards([fine])
    # a finite mean over a non-finite example reward is still refused
    with pytest.raises(ValueError, match=r"^members \[2\] have NaN or infinite rewards"):
        check_rewards([fine, Record(2, 0.01, 0.5, 0.5, [float("nan"), 1.0], [False, True])])
    with pytest.raises(ValueError, match=r"^members \[2\] have NaN or infinite rewards"):
        check_rewards([fine, Record(2, 0.01, float("inf"), 0.5, [0.0, 1.0], [False, True])])
    many = [Record(s, 0.01, float("nan"), 0.5, [0.0], [False]) for s in range(10, 17)]
    with pytest.raises(ValueError, match=r"^members \[10, 11, 12, 13, 14\] have NaN"):
        check_rewards(many)


# -- the search loop with a scripted perturber and evaluator (no model) ---------------------------

class _StubPerturber:
    """Records which members run, how (population groups, one at a time) and which mode was
    asked for; `current` is the member(s) whose forward would run now."""

    model = "the model"

    def __init__(self, mode="population"):
        self.mode, self.events, self.current = mode, [], []

    def choose_mode(self, member_count, forward_calls):
        self.events.append(("choose", member_count, forward_calls))
        return self.mode

    def population(self, group):
        self.events.append(("population", [m.seeds[0] for m in group]))
        self.current = list(group)
        return contextlib.nullcontext()

    def run(self, member, mode):
        self.events.append((mode, member.seeds[0]))
        self.current = [member]
        return contextlib.nullcontext()


def _seed_reward(seed: int) -> float:
    return (seed % 7) / 7


class _StubEvaluator:
    """Each member's reward is a function of its seed: a record with another member's scores
    is visible."""

    forward_calls = 3

    def __init__(self, pert, n_examples=2):
        self.pert, self.n = pert, n_examples

    def _scores(self, member):
        from corp.evaluate import Scores
        r = np.full(self.n, _seed_reward(member.seeds[0]))
        return Scores(r, r >= 0.5, [None] * self.n)

    def __call__(self, model, examples):
        assert model == "the model" and len(examples) == self.n
        (member,) = self.pert.current
        return self._scores(member)

    def population(self, model, examples, n):
        assert model == "the model" and n == len(self.pert.current)
        return [self._scores(m) for m in self.pert.current]


def test_search_runs_every_member_once_in_population_groups_and_logs_its_own_scores(tmp_path):
    seeds = member_seeds(5)
    pert = _StubPerturber("population")
    records = search(pert, _StubEvaluator(pert), ["a", "b"], seeds, [0.01, 0.02],
                     str(tmp_path / "pop.jsonl"), {"k": 1}, population_batch=2, progress=False)
    # mode "auto" by default: chosen for a group of population_batch members (or fewer)
    assert pert.events == [("choose", 2, 3), ("population", seeds[:2]), ("population", seeds[2:4]),
                           ("fused", seeds[4])]  # a group of one runs fused
    assert [r.seed for r in records] == seeds
    assert [r.reward for r in records] == [_seed_reward(s) for s in seeds]
    assert [r.sigma for r in records] == [member_sigma(s, [0.01, 0.02]) for s in seeds]
    # the default batch is 16; in place, members run one by one in in-place mode
    pert = _StubPerturber("inplace")
    search(pert, _StubEvaluator(pert), ["a", "b"], seeds, [0.01], str(tmp_path / "b.jsonl"),
           {"k": 1}, progress=False)
    assert pert.events == [("choose", 5, 3)] + [("inplace", s) for s in seeds]
    pert = _StubPerturber()
    search(pert, _StubEvaluator(pert), ["a", "b"], member_seeds(20), [0.01],
           str(tmp_path / "c.jsonl"), {"k": 1}, mode="population", progress=False)
    assert [len(e[1]) for e in pert.events] == [16, 4]


def test_search_shows_progress_and_says_when_it_resumes(tmp_path, capsys, caplog):
    path = str(tmp_path / "pop.jsonl")
    seeds = member_seeds(5)
    pert = _StubPerturber("inplace")
    with caplog.at_level("INFO", logger="corp"):
        search(pert, _StubEvaluator(pert), ["a", "b"], seeds[:2], [0.01], path, {"k": 1})
    assert "resuming" not in caplog.text  # nothing to resume
    bar = capsys.readouterr().err.replace("\r", "\n").strip().splitlines()[-1]
    assert bar.startswith("members: 100%") and " 2/2 " in bar
    assert re.search(r"(member/s|s/member)\]$", bar), bar  # the unit is a member
    pert = _StubPerturber("inplace")
    with caplog.at_level("INFO", logger="corp"):
        search(pert, _StubEvaluator(pert), ["a", "b"], seeds, [0.01], path, {"k": 1})
    assert f"resuming: 2 of 5 members already in {path}" in caplog.text
    assert pert.events[1:] == [("inplace", s) for s in seeds[2:]]
    lines = capsys.readouterr().err.replace("\r", "\n").split("\n")
    counts = [line.split("|")[2].split()[0] for line in lines if line.startswith("members:")]
    assert counts[0] == "2/5" and counts[-1] == "5/5"  # starts at the logged members
    assert search(pert, _StubEvaluator(pert), ["a", "b"], seeds, [0.01], path, {"k": 1},
                  progress=False) and capsys.readouterr().err == ""


def test_member_record_refusals_name_the_task_the_example_and_its_prompt():
    from corp.evaluate import Scores
    from corp.method.population import member_record
    from corp.method.perturb import Member

    class Task:
        name = "math"

    class Evaluator:
        task = Task()

    member = Member.single(7, 0.01)
    scores = Scores(np.array([1.0, float("nan"), float("inf")]), np.zeros(3, bool), [None] * 3)
    long_prompt = "q" * 150 + "r" * 150
    examples = [Example("p0", "1"), Example(long_prompt, "2"), Example("p2", "3")]
    with pytest.raises(ValueError) as e:
        member_record(member, scores, Evaluator(), examples)
    assert str(e.value).startswith(
        f"task 'math' gave reward nan to train example 1 (prompt {long_prompt[:200]!r}) for "
        f"member 7 (2 of 3 examples non-finite)")
    # no task: the evaluator's type names it; plain strings are their own prompts
    with pytest.raises(ValueError, match=r"^task 'object' gave reward nan to train example 1 "
                                         r"\(prompt 'two'\)"):
        member_record(member, scores, object(), ["one", "two", "three"])
    # a reward that is not a number at all (None) is refused the same way
    bad = Scores(np.array([1.0, None, 0.0], dtype=object), np.zeros(3, bool), [None] * 3)
    with pytest.raises(ValueError, match=r"gave reward nan to train example 1"):
        member_record(member, bad, Evaluator(), examples)
    with pytest.raises(ValueError, match=r"^the evaluator returned 3 rewards for 2 train "
                                         r"examples \(member 7\)$"):
        member_record(member, scores, Evaluator(), examples[:2])
    ok = Scores(np.array([1, 0, 1]), np.array([True, False, True]), [None] * 3)
    assert member_record(member, ok, Evaluator(), examples) == Record(
        7, 0.01, 2 / 3, 2 / 3, [1.0, 0.0, 1.0], [True, False, True])


def test_the_writer_lock_is_the_log_path_plus_lock(tmp_path):
    path = str(tmp_path / "pop.jsonl")
    with PopulationLog(path, {"k": 1}):
        assert os.path.exists(path + ".lock")
    assert sorted(os.listdir(tmp_path)) == ["pop.jsonl", "pop.jsonl.lock"]


def test_iter_member_scores_defaults():
    from corp.method.population import iter_member_scores
    from corp.method.perturb import Member

    class NoForwardCount(_StubEvaluator):
        forward_calls = property(lambda self: (_ for _ in ()).throw(AttributeError))

    one = [Member.single(3, 0.01)]
    pert = _StubPerturber("inplace")
    out = list(iter_member_scores(pert, NoForwardCount(pert), ["a", "b"], one))
    # mode "auto" by default; one member asks for a batch of one; an evaluator without
    # forward_calls is taken to make one forward call per example batch
    assert pert.events == [("choose", 1, 1), ("inplace", 3)]
    assert [m for m, _ in out] == one and out[0][1].reward == _seed_reward(3)
    members = [Member.single(s, 0.01) for s in member_seeds(20)]
    pert = _StubPerturber("population")
    list(iter_member_scores(pert, _StubEvaluator(pert), ["a", "b"], members))
    assert pert.events[0] == ("choose", 16, 3)  # population_batch 16 by default
    assert [len(e[1]) for e in pert.events[1:]] == [16, 4]


def test_member_seeds_refuses_what_is_not_a_positive_int():
    for bad in (0, -3, 2.5, True, "4", None):
        with pytest.raises(ValueError, match=rf"^population size must be an int >= 1, got "
                                             rf"{re.escape(repr(bad))}$"):
            member_seeds(bad)
    assert len(set(member_seeds(300))) == 300


def test_reopening_a_log_with_a_deferred_header_appends_to_it(tmp_path):
    # a distributed search defers the header of a new log; an existing log must be appended to,
    # never rewritten from a header
    path = str(tmp_path / "pop.jsonl")
    header = {"sigmas": [0.01], "train": ["a"]}
    _log_with_members(path, header, n=2)
    before = read_log(path)[1]
    extra = member_seeds(3)[2]
    with PopulationLog(path, header, defer_header=True) as pop_log:
        assert set(pop_log.records) == {r.seed for r in before}
        pop_log.add(Record(extra, member_sigma(extra, [0.01]), 0.25, 0.0, [0.25], [False]))
    assert [r.seed for r in read_log(path)[1]] == [r.seed for r in before] + [extra]


def test_closing_twice_and_a_refused_writer_leave_no_error_behind(tmp_path, monkeypatch):
    import gc
    import sys
    unraisable = []
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    path = str(tmp_path / "pop.jsonl")
    pop_log = PopulationLog(path, {"k": 1})
    pop_log.close()
    pop_log.close()  # idempotent
    with PopulationLog(path, {"k": 1}) as holder:
        with pytest.raises(PopulationLogError, match="being written by another process"):
            PopulationLog(path, {"k": 1})  # refused in its constructor: no lock to release
        gc.collect()
        assert holder.records == {}
    gc.collect()
    assert unraisable == []  # nothing raised in __del__
