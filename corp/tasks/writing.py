"""Creative writing under constraints, scored offline by constraint satisfaction.

Each prompt asks for a short piece about a topic that must contain two given words, stay within a
word limit and end with a given punctuation mark. Reward = fraction of the four constraints met
(word 1 present, word 2 present, 5 <= words <= limit, the last character is the required mark);
correct = all four. The answer is the completion itself (stripped), so a majority vote only
agrees when members write the same text; otherwise it falls back to the best-ranked member.
"""

from __future__ import annotations

import random
import re

from .base import Example, GeneratedTask

_TOPICS = ["a lighthouse", "a lost cat", "the first snow", "a rainy market", "an old map",
           "a night train", "a garden robot", "a quiet library", "a broken clock", "the sea",
           "a mountain village", "a birthday cake", "a paper boat", "a sleepy dragon"]
_WORDS = ["silver", "whisper", "lantern", "orange", "river", "shadow", "music", "window",
          "candle", "feather", "bridge", "thunder", "garden", "mirror", "honey", "stone"]
_ENDINGS = {"!": "an exclamation mark", "?": "a question mark", ".": "a period"}
_WORD = re.compile(r"[A-Za-z']+")


class ConstrainedWritingTask(GeneratedTask):
    name = "writing"
    max_new_tokens = 48

    def __init__(self, n_train: int = 16, n_val: int = 32, n_test: int = 48, seed: int = 0):
        super().__init__(n_train, n_val, n_test, seed)

    def all_examples(self) -> list[Example]:
        rng = random.Random(777)
        out, seen = [], set()
        while len(out) < 400:
            topic = rng.choice(_TOPICS)
            w1, w2 = rng.sample(_WORDS, 2)
            limit = rng.choice([20, 25, 30])
            mark = rng.choice(list(_ENDINGS))
            if (topic, w1, w2, limit, mark) in seen:
                continue
            seen.add((topic, w1, w2, limit, mark))
            prompt = (f"Write a very short story about {topic} in at most {limit} words. It must "
                      f"use the words \"{w1}\" and \"{w2}\" and end with {_ENDINGS[mark]}.")
            out.append(Example(prompt, f"{w1}|{w2}|{limit}|{mark}",
                               {"words": (w1, w2), "limit": limit, "mark": mark}))
        return out

    def parse(self, completion: str) -> str | None:
        text = completion.strip()
        return text or None

    def constraints(self, answer: str, example: Example) -> list[bool]:
        words = [w.lower() for w in _WORD.findall(answer)]
        w1, w2 = example.meta["words"]
        return [w1 in words, w2 in words, 5 <= len(words) <= example.meta["limit"],
                answer.rstrip().rstrip("\"'").endswith(example.meta["mark"])]

    def score(self, answer: str | None, example: Example) -> float:
        if answer is None:
            return 0.0
        met = self.constraints(answer, example)
        return sum(met) / len(met)
