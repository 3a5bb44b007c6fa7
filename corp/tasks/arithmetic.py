"""Math tasks, generated offline: one- and two-step arithmetic word problems, and Countdown.

Small instruction models restate the question before answering, so answers are parsed from the
end: an explicit "answer is N" / "Answer: N" / "#### N" / \\boxed{N} wins, otherwise the last
number in the completion.
"""

from __future__ import annotations

import ast
import random
import re
from fractions import Fraction

from .base import Example, GeneratedTask

_NUMBER = r"-?\d[\d,]*(?:\.\d+)?"
_MARKED = re.compile(r"(?:answer(?: is)?\s*[:=]?|####|\\boxed\{)\s*\$?\s*(" + _NUMBER + ")",
                     re.IGNORECASE)
_ANY = re.compile(_NUMBER)


def _canonical(number: str) -> str | None:
    try:
        value = Fraction(number.replace(",", ""))
    except (ValueError, ZeroDivisionError):
        return None
    return str(value.numerator) if value.denominator == 1 else str(float(value))


def final_number(text: str) -> str | None:
    """The answer a completion ends on: the last explicitly marked number, else the last one."""
    marked = _MARKED.findall(text)
    found = marked or _ANY.findall(text)
    return _canonical(found[-1].rstrip(",")) if found else None


_NAMES = ["Tom", "Ana", "Li", "Sam", "Maya", "Omar", "Eva", "Raj", "Zoe", "Ben", "Ida", "Kai"]
_ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]


class WordProblemTask(GeneratedTask):
    """Arithmetic word problems (one or two steps: +, -, x). Reward: 1 if the final number equals
    the answer, else 0 (GSM8K-style exact match)."""

    name = "math"
    max_new_tokens = 48

    def __init__(self, n_train: int = 16, n_val: int = 32, n_test: int = 48, seed: int = 0):
        super().__init__(n_train, n_val, n_test, seed)

    def all_examples(self) -> list[Example]:
        rng = random.Random(1234)  # the pool is fixed; `seed` only shuffles it into splits
        out, seen = [], set()
        while len(out) < 600:
            name, item = rng.choice(_NAMES), rng.choice(_ITEMS)
            a, b, c = rng.randint(2, 40), rng.randint(2, 30), rng.randint(2, 9)
            kind = rng.randrange(5)
            if kind == 0:
                q, ans = f"{name} has {a} {item} and gets {b} more. How many {item} does " \
                         f"{name} have now?", a + b
            elif kind == 1:
                a = a + b
                q, ans = f"{name} has {a} {item} and gives away {b}. How many {item} are " \
                         f"left?", a - b
            elif kind == 2:
                q, ans = f"{name} buys {c} bags with {b} {item} in each bag. How many {item} " \
                         f"is that in total?", b * c
            elif kind == 3:
                q, ans = f"{name} has {a} {item}, buys {c} packs of {b} {item}, and then has " \
                         f"how many {item}?", a + b * c
            else:
                q, ans = f"{name} had {a + b + c} {item}. {name} lost {b} and gave {c} to a " \
                         f"friend. How many {item} are left?", a
            if q in seen:
                continue
            seen.add(q)
            out.append(Example(q, str(ans)))
        return out

    def parse(self, completion: str) -> str | None:
        return final_number(completion)

    def score(self, answer: str | None, example: Example) -> float:
        return float(answer is not None and answer == example.answer)


# --- Countdown -------------------------------------------------------------------------------

_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b,
        ast.Mult: lambda a, b: a * b, ast.Div: lambda a, b: a / b}
_EXPR = re.compile(r"[\d\s+\-*/×x÷()]*\d[\d\s+\-*/×x÷()]*")


def safe_eval(expr: str) -> tuple[Fraction, list[int]] | None:
    """Value (exact) and the integer literals of an arithmetic expression; None if it is not
    one (only + - * / parentheses and integers; no names, calls or powers)."""
    expr = expr.replace("×", "*").replace("x", "*").replace("÷", "/")
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except (SyntaxError, ValueError):
        return None
    numbers: list[int] = []

    def walk(node):
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int) and \
                not isinstance(node.value, bool):
            numbers.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            left, right = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Div) and right == 0:
                raise ZeroDivisionError
            return _OPS[type(node.op)](left, right)
        raise ValueError("not arithmetic")

    try:
        return walk(tree), numbers
    except (ValueError, ZeroDivisionError, RecursionError):
        return None


class CountdownTask(GeneratedTask):
    """Reach the target with the given numbers (each at most once) and + - * /. Reward (as in
    RandOpt's Countdown): 1 if the final expression uses only the given numbers, each at most
    once, and equals the target; 0.1 if it is a well-formed expression over allowed numbers that
    misses; 0 otherwise. The answer is the last arithmetic expression in the completion (text
    after '=' is dropped)."""

    name = "countdown"
    max_new_tokens = 48

    def __init__(self, n_train: int = 16, n_val: int = 32, n_test: int = 48, seed: int = 0):
        super().__init__(n_train, n_val, n_test, seed)

    def all_examples(self) -> list[Example]:
        rng = random.Random(4321)
        out, seen = [], set()
        while len(out) < 600:
            nums = [rng.randint(1, 12) for _ in range(3)]
            a, b, c = nums
            op1, op2 = rng.choice("+-*"), rng.choice("+-")
            target = eval(f"({a} {op1} {b}) {op2} {c}")  # our own digits: safe
            key = (tuple(sorted(nums)), target)
            if target <= 0 or key in seen:
                continue
            seen.add(key)
            shown = nums[:]
            rng.shuffle(shown)
            prompt = (f"Using the numbers {', '.join(map(str, shown))} (each at most once) and "
                      f"+ - * /, write an expression that equals {target}. End with "
                      f"'Answer: <expression>'.")
            out.append(Example(prompt, str(target), {"numbers": shown}))
        return out

    def parse(self, completion: str) -> str | None:
        tail = completion.split("Answer:")[-1] if "Answer:" in completion else completion
        candidates = []
        for line in tail.splitlines():
            left = line.split("=")[0]
            for m in _EXPR.finditer(left):
                text = m.group(0).strip()
                if re.search(r"\d\s*[+\-*/×x÷]\s*\(?\s*\d", text) and safe_eval(text):
                    candidates.append(re.sub(r"\s+", "", text))
        return candidates[-1] if candidates else None

    def score(self, answer: str | None, example: Example) -> float:
        if answer is None:
            return 0.0
        parsed = safe_eval(answer)
        if parsed is None:
            return 0.0
        value, used = parsed
        pool = list(example.meta["numbers"])
        for n in used:
            if n not in pool:
                return 0.0
            pool.remove(n)
        return 1.0 if value == int(example.answer) else 0.1

