"""Built-in task, answer parsing, user task files, and the character codec."""

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
