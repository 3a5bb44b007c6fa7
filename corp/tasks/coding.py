"""Code task: small Python functions checked by unit tests, executed in `corp.tasks.sandbox`.

Reward = fraction of the example's tests that pass (0 for no code, a crash, a timeout or a policy
violation). Problems come from families of one-line specifications with a parameter, so the pool
is large, offline and exactly checkable; each family has a reference implementation from which the
expected outputs of its tests are computed.
"""

from __future__ import annotations

import random
import re

from .sandbox import run_tests
from .base import Example, GeneratedTask

# (function name, argument name, specification with {k}, reference(k) -> function, test inputs,
# test inputs for k > 9). The first inputs are the original pool's (k = 2..9, kept as they were
# for the committed results); above 9 several of them stop depending on k (the first 10 characters
# of a 10-character string are the string), so that `return s` would pass: the second set is
# built from k.
_FAMILIES = [
    ("multiply", "x", "returns x multiplied by {k}", lambda k: lambda x: x * k, [0, 3, -7],
     lambda k: [0, 3, -7]),
    ("add_k", "x", "returns x plus {k}", lambda k: lambda x: x + k, [0, 5, -12],
     lambda k: [0, 5, -12]),
    ("is_divisible", "n", "returns True if n is divisible by {k}, else False",
     lambda k: lambda n: n % k == 0, [12, 7, 0], lambda k: [2 * k, 2 * k + 1, k + 2]),
    ("repeat", "s", "returns the string s repeated {k} times", lambda k: lambda s: s * k,
     ["ab", "", "x"], lambda k: ["ab", "", "x"]),
    ("first_chars", "s", "returns the first {k} characters of the string s",
     lambda k: lambda s: s[:k], ["abcdefghij", "hi", "python"],
     lambda k: [(_ALPHABET * 3)[:k + 5], "hi", "python"]),
    ("power", "x", "returns x raised to the power {k}", lambda k: lambda x: x ** k, [2, -3, 5],
     lambda k: [2, -3, 5]),
    ("clip", "x", "returns x, but at most {k}", lambda k: lambda x: min(x, k), [1, 100, -4],
     lambda k: [1, 100, -4]),
    ("last_items", "xs", "returns a list of the last {k} elements of the list xs",
     lambda k: lambda xs: xs[-k:], [[1, 2, 3, 4, 5, 6, 7, 8, 9], list(range(20)), [4, 5, 6]],
     lambda k: [list(range(k + 5)), list(range(2 * k)), [4, 5, 6]]),
    ("square_plus", "x", "returns x squared plus {k}", lambda k: lambda x: x * x + k,
     [0, 4, -3], lambda k: [0, 4, -3]),
    ("sum_above", "xs", "returns the sum of the elements of the list xs that are greater than {k}",
     lambda k: lambda xs: sum(v for v in xs if v > k), [[1, 5, 9, 12], [], [20, 3, 8]],
     lambda k: [[k - 1, k, k + 1, k + 5], [], [2 * k, 3, k + 2]]),
    ("count_multiples", "xs", "returns how many numbers in the list xs are multiples of {k}",
     lambda k: lambda xs: sum(v % k == 0 for v in xs), [[1, 2, 3, 4, 5, 6], [0, 7, 14], [9]],
     lambda k: [[k, 2 * k, 2 * k + 1, 5], [0, k - 1, 3 * k], [k + 1]]),
    ("pad_left", "s", "returns the string s padded on the left with '*' to length {k}",
     lambda k: lambda s: s.rjust(k, "*"), ["ab", "", "abcdefghijklmnop"],
     lambda k: ["ab", "", "abcdefghijklmnop"]),
]
_ALPHABET = "abcdefghijklmnopqrstuvwxyz"
_PLAIN = [
    ("reverse_string", "s", "returns the string s reversed", lambda s: s[::-1],
     ["hello", "", "ab"]),
    ("max_of_list", "xs", "returns the largest number in the non-empty list xs", max,
     [[3, 9, 2], [-5, -2], [7]]),
    ("count_vowels", "s", "returns the number of vowels (a, e, i, o, u) in the string s",
     lambda s: sum(c in "aeiou" for c in s), ["banana", "xyz", "education"]),
    ("is_palindrome", "s", "returns True if the string s reads the same backwards",
     lambda s: s == s[::-1], ["racecar", "ab", ""]),
    ("sum_list", "xs", "returns the sum of the numbers in the list xs", sum,
     [[1, 2, 3], [], [-4, 4, 10]]),
    ("word_count", "s", "returns the number of words in the string s (split on spaces)",
     lambda s: len(s.split()), ["a b c", "", "one"]),
    ("evens", "xs", "returns a list of the even numbers in the list xs, in order",
     lambda xs: [v for v in xs if v % 2 == 0], [[1, 2, 3, 4], [], [7, 8]]),
    ("to_upper", "s", "returns the string s in upper case", str.upper, ["abc", "Hi 2", ""]),
]
_FENCE = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


def extract_code(completion: str) -> str | None:
    """The program in a completion: the first fenced block, else everything from the first
    `def`/`import` on; None when there is none."""
    fenced = _FENCE.search(completion)
    if fenced and fenced.group(1).strip():
        return fenced.group(1).strip()
    start = re.search(r"^(def |import |from )", completion, re.MULTILINE)
    return completion[start.start():].strip() if start else None


class CodeTask(GeneratedTask):
    """Write a small Python function; reward = fraction of its 3 unit tests that pass."""

    name = "code"
    max_new_tokens = 80

    def __init__(self, n_train: int = 16, n_val: int = 32, n_test: int = 48, seed: int = 0,
                 timeout: float = 3.0, max_k: int = 9):
        # max_k bounds each family's parameter k in 2..max_k: 9 gives the original pool of 104
        # problems (the committed smollm2-cpu results), 40 gives 476 for powered splits; above 9
        # each family's test inputs are built from k (see _FAMILIES).
        if not isinstance(max_k, int) or isinstance(max_k, bool) or max_k < 2:
            raise ValueError(f"max_k must be an integer >= 2, got {max_k!r}")
        super().__init__(n_train, n_val, n_test, seed)
        self.timeout, self.max_k = timeout, max_k
        self._cache: dict[tuple[str, str], float] = {}  # members often write identical code

    def all_examples(self) -> list[Example]:
        out = []
        for name, arg, spec, make, inputs, large_inputs in _FAMILIES:
            for k in range(2, self.max_k + 1):
                out.append(self._example(name, arg, spec.format(k=k), make(k),
                                         inputs if k <= 9 else large_inputs(k)))
        for name, arg, spec, ref, inputs in _PLAIN:
            out.append(self._example(name, arg, spec, ref, inputs))
        return out

    @staticmethod
    def _example(name, arg, spec, ref, inputs) -> Example:
        tests = [f"assert {name}({x!r}) == {ref(x)!r}" for x in inputs]
        prompt = (f"Write a Python function `{name}({arg})` that {spec}. Reply with only the "
                  f"code.")
        return Example(prompt, tests[0], {"tests": tests})

    def parse(self, completion: str) -> str | None:
        return extract_code(completion)

    def score(self, answer: str | None, example: Example) -> float:
        if answer is None:
            return 0.0
        key = (answer, example.prompt)
        if key not in self._cache:
            self._cache[key] = run_tests(answer, example.meta["tests"], self.timeout).fraction
        return self._cache[key]
