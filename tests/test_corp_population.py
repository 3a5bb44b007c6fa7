"""Population search log: resume after interruption, truncated lines, foreign logs; the ensemble."""

import json

import numpy as np
import pytest

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
