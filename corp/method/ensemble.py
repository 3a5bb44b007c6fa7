"""RandOpt's deployable baselines: the best single member, and the top-K majority vote.

The vote is over parsed answers (unparseable answers do not vote); a tie goes to the answer of
the better-ranked member among the tied ones. K forward passes per example.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from ..evaluate import Scores
from .perturb import Perturber
from .population import Record, iter_member_scores


def top_k(records: Sequence[Record], k: int) -> list[Record]:
    """The K best members by mean train reward (ties: earlier in the population first)."""
    if not records:
        raise ValueError("the population is empty: run `corp search` first")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= len(records):
        raise ValueError(f"K must be an int in [1, N={len(records)}], got {k!r}")
    bad = [r.seed for r in records if not math.isfinite(r.reward)]
    if bad:  # a NaN sorts anywhere and scrambles the ranking
        raise ValueError(f"{len(bad)} member(s) have a NaN or infinite reward (seed {bad[0]} "
                         "first): the population log is damaged; rerun their evaluation")
    order = sorted(range(len(records)), key=lambda i: (-records[i].reward, i))
    return [records[i] for i in order[:k]]


def majority_vote(answer_lists: Sequence[Sequence]) -> list:
    """answer_lists[m][e]: member m's (rank order) answer to example e -> voted answer per e."""
    voted = []
    for answers in zip(*answer_lists):
        counts = Counter(a for a in answers if a is not None)
        if not counts:
            voted.append(None)
            continue
        best = max(counts.values())
        voted.append(next(a for a in answers if a is not None and counts[a] == best))
    return voted


def member_answers(perturber: Perturber, evaluator, examples, members: Sequence[Record],
                   mode: str = "auto", population_batch: int = 16) -> list[Scores]:
    """Each member's scores on `examples` (members in the given order)."""
    return [scores for _, scores in iter_member_scores(
        perturber, evaluator, examples, [r.member for r in members], mode, population_batch)]


def vote_scores(evaluator, member_scores: Sequence[Scores], examples) -> Scores:
    return evaluator.score_answers(majority_vote([s.answers for s in member_scores]), examples)
