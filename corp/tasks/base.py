"""What a task is: fixed splits of prompts with a documented reward, offline.

A task is an object with `name`, `max_new_tokens`, `splits()` -> {"train", "val", "test"} lists of
`Example`, `parse(completion)` -> the final answer (or None) and `score(answer, example)` -> reward
in [0, 1]. Correctness (the accuracy reported beside the mean reward) is `score == 1`. Voting
uses `parse`. Here: the `Example` record, `GeneratedTask` (splits cut from a deterministic pool)
and the addition task of the built-in tiny model; the other families have a module each.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

_INT = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str
    meta: dict = field(default_factory=dict, compare=False, hash=False)


def last_integer(text: str) -> str | None:
    """The last integer in `text`: robust to a model that restates the question first."""
    found = _INT.findall(text)
    return str(int(found[-1])) if found else None


class GeneratedTask:
    """A task whose examples come from `all_examples()` (deterministic); the splits are a fixed
    shuffle of that pool cut into train / val / test, disjoint by construction."""

    name = "generated"
    max_new_tokens = 32

    def __init__(self, n_train: int, n_val: int, n_test: int, seed: int = 0):
        self.seed = seed
        self.sizes = {"train": n_train, "val": n_val, "test": n_test}

    def all_examples(self) -> list[Example]:
        raise NotImplementedError

    def splits(self) -> dict[str, list[Example]]:
        pool = self.all_examples()
        random.Random(self.seed).shuffle(pool)
        need = sum(self.sizes.values())
        if need > len(pool):
            raise ValueError(f"task {self.name!r} has {len(pool)} distinct examples, "
                             f"{need} requested")
        out, start = {}, 0
        for split, size in self.sizes.items():
            out[split] = pool[start:start + size]
            start += size
        return out


class AdditionTask(GeneratedTask):
    """'a+b=' -> 'c' for a, b in [0, max_operand). Reward: 1 for the exact sum; otherwise half the
    fraction of the answer's digits that are right (aligned from the right), so that near misses
    rank above garbage; 0 when no integer is found. Prompts are bare ('37+5=') so that the
    character-level tiny models can read them."""

    name = "add"

    def __init__(self, max_operand: int = 50, n_train: int = 64, n_val: int = 128,
                 n_test: int = 128, seed: int = 0):
        super().__init__(n_train, n_val, n_test, seed)
        self.max_operand = max_operand
        self.max_new_tokens = len(str(2 * max_operand)) + 1

    def all_examples(self) -> list[Example]:
        return [Example(f"{a}+{b}=", str(a + b)) for a in range(self.max_operand)
                for b in range(self.max_operand)]

    def parse(self, completion: str) -> str | None:
        return last_integer(completion)

    def score(self, answer: str | None, example: Example) -> float:
        if answer is None:
            return 0.0
        if answer == example.answer:
            return 1.0
        target = example.answer
        right = sum(a == b for a, b in zip(reversed(answer), reversed(target)))
        return 0.5 * right / max(len(target), len(answer))
