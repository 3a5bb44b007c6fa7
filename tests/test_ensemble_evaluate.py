"""RandOpt's baselines (corp.method.ensemble) and the evaluator's bookkeeping (corp.evaluate),
each behaviour pinned by the plausible bug it would let through (found by mutation testing,
benchmarks/results/mutation-corp.md)."""

import numpy as np
import pytest
import torch

from corp.evaluate import TextEvaluator, left_pad
from corp.method.ensemble import majority_vote, member_answers, top_k, vote_scores
from corp.method.perturb import Member, PerturbationSpec, Perturber
from corp.method.population import Record
from corp.models import build_tiny_model
from corp.tasks import AdditionTask, Example
from corp_helpers import records_with_rewards


# -- top_k ---------------------------------------------------------------------------------------

def test_top_k_ranks_by_reward_and_breaks_ties_by_position():
    recs = records_with_rewards([0.2, 0.5, 0.5, 0.1, 0.9], first_seed=100)
    assert [r.seed for r in top_k(recs, 3)] == [104, 101, 102]  # 0.9, then the earlier 0.5
    assert [r.seed for r in top_k(recs, 5)] == [104, 101, 102, 100, 103]  # K = N is allowed
    assert [r.seed for r in top_k(recs, 1)] == [104]


@pytest.mark.parametrize("k", [0, 6, -1, 2.0, True, "2", None])
def test_top_k_refuses_a_bad_k_naming_it(k):
    with pytest.raises(ValueError, match=r"K must be an int in \[1, N=5\], got"):
        top_k(records_with_rewards([0.1] * 5, first_seed=100), k)


def test_top_k_refuses_an_empty_or_damaged_population():
    with pytest.raises(ValueError, match="the population is empty: run `corp search` first"):
        top_k([], 1)
    with pytest.raises(ValueError, match=r"1 member\(s\) have a NaN or infinite reward \(seed 101 "
                                         r"first\): the population log is damaged; rerun"):
        top_k(records_with_rewards([0.1, float("nan"), 0.3], first_seed=100), 1)


# -- majority_vote -------------------------------------------------------------------------------

def test_majority_vote_counts_parsed_answers_and_ties_go_to_the_better_member():
    answers = [["1", None, "7", "a", None],   # member ranked first
               ["2", None, "8", "b", "5"],
               ["2", None, "9", "a", None]]
    # example 0: "2" has two votes; 1: nobody parsed an answer (and the vote goes on to the
    # next example); 2: a three-way tie goes to the best member; 3: "a" wins; 4: None does not
    # vote, so the single parsed answer wins
    assert majority_vote(answers) == ["2", None, "7", "a", "5"]
    assert majority_vote([["x", "y"]]) == ["x", "y"]


# -- evaluator bookkeeping -----------------------------------------------------------------------

def test_left_pad_pads_on_the_left_with_a_long_mask():
    ids, mask = left_pad([[5, 6, 7], [8], [9, 10]], pad_id=0)
    assert ids.dtype == torch.long and mask.dtype == torch.long
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8], [0, 9, 10]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1], [0, 1, 1]]


class _BoolTask:
    """A task whose score returns bools and has no `name`."""
    max_new_tokens = 4

    def parse(self, completion):
        return completion or None

    def score(self, answer, example):
        return answer == example.answer


class _HalfTask(_BoolTask):
    def score(self, answer, example):
        return {"right": 1.0, "near": 0.5}.get(answer, 0.0)


def test_rewards_are_floats_and_correct_means_reward_at_least_one():
    examples = [Example("p1", "right"), Example("p2", "x"), Example("p3", "y")]
    ev = TextEvaluator(_BoolTask(), codec=None)
    s = ev.score_completions(["right", "", "no"], examples)
    assert s.rewards.dtype == np.float64  # bool rewards of two members can be subtracted
    assert s.rewards.tolist() == [1.0, 0.0, 0.0] and s.answers == ["right", None, "no"]
    ev = TextEvaluator(_HalfTask(), codec=None)
    for s in (ev.score_completions(["right", "near", "zzz"], examples),
              ev.score_answers(["right", "near", "zzz"], examples)):
        assert s.rewards.tolist() == [1.0, 0.5, 0.0]
        assert s.correct.tolist() == [True, False, False]  # partial credit is not correct
        assert s.answers == ["right", "near", "zzz"] and (s.reward, s.accuracy) == (0.5, 1 / 3)
    assert isinstance(ev.score_answers(("right",), examples[:1]).answers, list)


def test_a_non_finite_reward_names_a_nameless_task_by_its_class_and_the_prompt():
    class Inf(_BoolTask):
        def score(self, answer, example):
            return float("inf")
    long_prompt = "q" * 200 + "TAIL"
    with pytest.raises(ValueError) as err:
        TextEvaluator(Inf(), codec=None).score_answers(["a"], [Example(long_prompt, "a")])
    assert "task 'Inf' gave reward inf" in str(err.value)
    assert repr("q" * 200) in str(err.value)  # the prompt, cut at 200 characters


def test_evaluator_call_and_population_score_what_generate_returns():
    lm = build_tiny_model("llama", seed=2)
    task = AdditionTask(n_train=5, n_val=2, n_test=2)
    ev = TextEvaluator(task, lm.codec, batch_size=3)
    examples = task.splits()["train"]
    completions = ev.generate(lm.model, [e.prompt for e in examples])[0]
    want = ev.score_completions(completions, examples)
    got = ev(lm.model, examples)
    assert got.rewards.tolist() == want.rewards.tolist() and got.answers == want.answers
    copies = ev.population(lm.model, examples, copies=3)
    assert len(copies) == 3  # the same weights in every copy: the same scores
    assert all(c.answers == want.answers and c.rewards.tolist() == want.rewards.tolist()
               for c in copies)


def test_member_answers_keep_the_members_order_and_vote_scores_the_vote():
    lm = build_tiny_model("llama", seed=2)
    pert = Perturber(lm.model, PerturbationSpec())
    task = AdditionTask(n_train=6, n_val=2, n_test=2)
    ev = TextEvaluator(task, lm.codec, batch_size=4)
    examples = task.splits()["train"]
    recs = [Record(seed=s, sigma=0.3, reward=0.0, accuracy=0.0, rewards=[], correct=[])
            for s in (21, 22, 23)]
    for mode in ("inplace", "population", None):  # None: the default ("auto")
        kwargs = {} if mode is None else {"mode": mode}
        got = member_answers(pert, ev, examples, recs, **kwargs)
        alone = []
        for r in recs:
            with pert.inplace(Member.single(r.seed, r.sigma)):
                alone.append(ev(lm.model, examples))
        assert [g.answers for g in got] == [a.answers for a in alone], mode
    assert len({tuple(a.answers) for a in alone}) == 3  # the members do differ
    voted = vote_scores(ev, alone, examples)
    assert voted.answers == majority_vote([a.answers for a in alone])
    assert voted.rewards.tolist() == ev.score_answers(voted.answers, examples).rewards.tolist()
