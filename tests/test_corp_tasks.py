"""Built-in task, answer parsing, user task files, and the character codec."""

import re

import pytest

from corp.models import CharCodec
from corp.tasks import AdditionTask, Example, last_integer, load_task


def test_last_integer_survives_a_restated_question():
    assert last_integer("12+7= the answer to 12+7 is 19.") == "19"
    assert last_integer("no number") is None
    assert last_integer("-05") == "-5"


def test_addition_splits_are_fixed_disjoint_and_scored():
    task = AdditionTask(n_train=10, n_val=10, n_test=10)
    a, b = task.splits(), AdditionTask(n_train=10, n_val=10, n_test=10).splits()
    assert a == b
    prompts = [e.prompt for split in a.values() for e in split]
    assert len(set(prompts)) == 30
    e = Example("12+9=", "21")
    assert task.score("21", e) == 1.0 and task.score(None, e) == 0.0
    assert task.score("31", e) == 0.25  # one digit of two right, half credit
    with pytest.raises(ValueError, match="distinct examples"):
        AdditionTask(max_operand=3).splits()


def test_a_user_task_is_one_file(tmp_path):
    path = tmp_path / "mytask.py"
    path.write_text("from corp.tasks import AdditionTask\nTASK = AdditionTask(max_operand=20, "
                    "n_train=4, n_val=4, n_test=4)\n")
    assert load_task(str(path)).max_operand == 20
    (tmp_path / "bad.py").write_text("x = 1\n")
    with pytest.raises(ValueError, match="TASK"):
        load_task(str(tmp_path / "bad.py"))
    with pytest.raises(ValueError, match="unknown task"):
        load_task("nope")


def test_char_codec_round_trip_and_unknown_characters():
    codec = CharCodec()
    ids = codec.encode_target("123")
    assert codec.decode(ids + [5, 6]) == "123"  # stops at eos
    assert codec.encode_prompt("1+2=")[0] == codec.bos_id
    with pytest.raises(ValueError, match="alphabet"):
        codec.encode_prompt("1+2=#")


# --- the offline tasks of `corp experiment` ---------------------------------------------------

from corp.tasks.coding import CodeTask, extract_code  # noqa: E402
from corp.tasks.arithmetic import CountdownTask, WordProblemTask, final_number, safe_eval  # noqa: E402
from corp.tasks.writing import ConstrainedWritingTask  # noqa: E402


@pytest.mark.parametrize("task_cls", [WordProblemTask, CountdownTask, CodeTask,
                                      ConstrainedWritingTask])
def test_offline_tasks_have_fixed_disjoint_splits(task_cls):
    a, b = task_cls().splits(), task_cls().splits()
    assert a == b and {k: len(v) for k, v in a.items()} == {"train": 16, "val": 32, "test": 48}
    prompts = [e.prompt for split in a.values() for e in split]
    assert len(set(prompts)) == len(prompts)
    assert task_cls(seed=1).splits() != a


def test_final_number_prefers_the_marked_answer():
    assert final_number("Tom has 3 + 4 = 7 apples. The answer is 7.") == "7"
    assert final_number("The answer is 12. Check: 12 - 5 = 7") == "12"
    assert final_number("#### 1,234") == "1234"
    assert final_number("so 7.0 apples") == "7"
    assert final_number("\\boxed{42} apples for 3 friends") == "42"
    assert final_number("no digits") is None


def test_word_problem_answers_are_right():
    for e in WordProblemTask().all_examples()[:50]:
        nums = [int(x) for x in final_number.__globals__["_ANY"].findall(e.prompt)]
        assert nums and int(e.answer) >= 0
    e = WordProblemTask().splits()["test"][0]
    task = WordProblemTask()
    assert task.score(task.parse(f"Restating: {e.prompt} The answer is {e.answer}."), e) == 1
    assert task.score(task.parse("I do not know."), e) == 0


def test_countdown_reward_follows_the_rules():
    task = CountdownTask()
    from corp.tasks import Example
    e = Example("...", "30", {"numbers": [12, 6, 3]})
    assert task.score(task.parse("First 12 + 6 = 18.\nAnswer: (12 + 6) + 3 * 4"), e) == 0.0  # 4
    assert task.score(task.parse("Answer: 12 * 3 - 6 = 30"), e) == 1.0
    assert task.score(task.parse("Answer: 12 + 6 + 3"), e) == 0.1  # well-formed, wrong value
    assert task.score(task.parse("Answer: 12 * 12 - 6"), e) == 0.0  # 12 used twice
    assert task.score(task.parse("I cannot."), e) == 0.0
    assert safe_eval("__import__('os')") is None and safe_eval("2 ** 99") is None
    assert safe_eval("6 / 0") is None
    for ex in task.all_examples()[:100]:  # every generated target is reachable
        assert ex.meta["numbers"] and int(ex.answer) > 0


def test_code_task_scores_by_unit_tests_in_the_sandbox():
    task = CodeTask()
    e = next(x for x in task.all_examples() if x.prompt.startswith("Write a Python function "
                                                                   "`reverse_string"))
    good = "Sure!\n```python\ndef reverse_string(s):\n    return s[::-1]\n```\nThis reverses."
    assert extract_code(good) == "def reverse_string(s):\n    return s[::-1]"
    assert task.score(task.parse(good), e) == 1.0
    partial = "def reverse_string(s):\n    return s[::-1] if s else 'x'"
    assert task.score(task.parse(partial), e) == pytest.approx(2 / 3)
    assert task.score(task.parse("I would use slicing."), e) == 0.0
    hostile = "```python\nimport os\nos.system('rm -rf ~')\ndef reverse_string(s):\n    " \
              "return s[::-1]\n```"
    assert task.score(task.parse(hostile), e) == 0.0


def test_every_code_problem_is_solvable_by_its_reference():
    # The expected values come from the reference; a hand-written solution must pass them.
    task = CodeTask()
    e = next(x for x in task.all_examples() if "`multiply(x)` that returns x multiplied by 3"
             in x.prompt)
    assert task.score("def multiply(x):\n    return 3 * x", e) == 1.0
    assert all(len(x.meta["tests"]) == 3 for x in task.all_examples())


def test_code_pool_grows_with_max_k_and_the_default_pool_is_unchanged():
    default = CodeTask()
    assert len(default.all_examples()) == 12 * 8 + 8  # the pool the committed results used
    assert default.splits() == CodeTask(max_k=9).splits()
    large = CodeTask(max_k=25, n_train=32, n_val=100, n_test=100)
    pool = large.all_examples()
    assert len(pool) == 12 * 24 + 8 and len({e.prompt for e in pool}) == len(pool)
    e = next(x for x in pool if "`multiply(x)` that returns x multiplied by 25" in x.prompt)
    assert large.score("def multiply(x):\n    return 25 * x", e) == 1.0
    assert large.score("def multiply(x):\n    return 24 * x", e) == pytest.approx(1 / 3)
    for bad in (1, 2.5, True):
        with pytest.raises(ValueError, match="max_k"):
            CodeTask(max_k=bad)


def test_large_k_problems_cannot_be_passed_without_k():
    """Above k = 9 every problem's tests differ from every other k's of its family, so no
    solution that ignores k passes two of them (the original inputs made `return s` pass
    first_chars for every k >= 10, `return 0` sum_above for k >= 20, ...)."""
    task = CodeTask(max_k=50)
    by_family = {}
    for e in task.all_examples():
        name = e.prompt.split("`")[1].split("(")[0]
        k = re.search(r"\b(\d+)\b", e.prompt.split("`")[2])
        by_family.setdefault(name, []).append((int(k.group(1)) if k else None, e))
    for name, problems in by_family.items():
        large = [tuple(e.meta["tests"]) for k, e in problems if k is not None and k > 9]
        others = [tuple(e.meta["tests"]) for k, e in problems if k is not None and k <= 9]
        assert len(set(large)) == len(large) and not set(large) & set(others), name
    lazy = {"first_chars": "def first_chars(s):\n    return s",
            "last_items": "def last_items(xs):\n    return xs",
            "is_divisible": "def is_divisible(n):\n    return n == 0",
            "sum_above": "def sum_above(xs):\n    return 0"}
    for name, code in lazy.items():
        for k, e in by_family[name]:
            if k in (10, 15, 20, 30, 50):  # a sample: each is a sandboxed run
                assert task.score(code, e) < 1.0, (name, k)


def test_writing_constraints():
    task = ConstrainedWritingTask()
    from corp.tasks import Example
    e = Example("...", "river|candle|20|!", {"words": ("river", "candle"), "limit": 20,
                                              "mark": "!"})
    assert task.score(task.parse("  The river carried a candle all night long!  "), e) == 1.0
    assert task.score("The river ran far away.", e) == 0.5  # word 1 and length only
    assert task.score(" ".join(["river candle"] * 15) + "!", e) == 0.75  # too long
    assert task.score(None, e) == 0.0
