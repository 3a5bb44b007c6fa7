"""greedy_decode, the evaluator's generation loop: the same tokens as `model.generate` (greedy),
rows retired from the batch as they finish without changing the rows that go on."""

import pytest
import torch

from corp.evaluate import greedy_decode, left_pad, pad_after_prefix
from corp.models import build_tiny_model

def _sharp_model(arch, seed=3):
    """A tiny random model whose attention is sharp enough that positions change its greedy
    tokens (at the default init its attention is near uniform and a wrong position would pass)."""
    model = build_tiny_model(arch, seed=seed).model
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "q_proj.weight" in name or "k_proj.weight" in name:
                p.mul_(12)
    return model


PROMPTS = [[1, 5, 6, 7], [1, 8], [1, 9, 10, 11, 12, 13, 14], [1, 15, 16], [1, 4, 4, 4, 4]]


def _generate(model, ids, mask, new, eos, pad):
    out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                         max_new_tokens=new, pad_token_id=pad, eos_token_id=eos, top_p=None,
                         top_k=None, temperature=None)[:, ids.shape[1]:]
    # generate stops when every row is done; greedy_decode always returns max_new_tokens columns
    return torch.nn.functional.pad(out, (0, new - out.shape[1]), value=pad)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_greedy_decode_matches_generate_with_rows_ending_early(arch):
    model = _sharp_model(arch)
    ids, mask = left_pad(PROMPTS, pad_id=0)
    free = _generate(model, ids, mask, 12, eos=None, pad=0)
    # an "EOS" that some rows emit part-way and others never do: rows leave the batch early
    ends = {}
    for token in free[:, 1:-1].flatten().tolist():
        rows = {r for r in range(len(PROMPTS)) if token in free[r, 1:-1].tolist()}
        if 0 < len(rows) < len(PROMPTS):
            ends[token] = rows
    assert ends, "the tiny model must emit some token in some rows only"
    eos = max(ends, key=lambda t: len(ends[t]))
    want = _generate(model, ids, mask, 12, eos=eos, pad=0)
    got = greedy_decode(model, ids, mask, 12, eos_id=eos, pad_id=0)
    assert torch.equal(got, want)
    assert (got == 0).any(), "some row ended early and was padded"


def test_positions_matter_to_this_model():
    """The check above could not pass with wrong positions: continuing every row at one fixed
    position changes the greedy tokens of this model."""
    model = _sharp_model("llama")
    ids, mask = left_pad(PROMPTS, pad_id=0)
    right = greedy_decode(model, ids, mask, 12, eos_id=2, pad_id=0)
    position = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask, position_ids=position).logits
        tokens, seq, m = [], ids, mask
        for _ in range(12):  # no cache, every new token at the last prompt position
            token = logits[:, -1].argmax(-1)
            tokens.append(token)
            seq, m = torch.cat([seq, token[:, None]], 1), torch.cat([m, m[:, :1] * 0 + 1], 1)
            pos = torch.cat([position, position[:, -1:].expand(-1, len(tokens))], 1)
            logits = model(input_ids=seq, attention_mask=m, position_ids=pos).logits
    assert not torch.equal(torch.stack(tokens, 1), right)


def test_finished_rows_stop_and_the_others_are_unchanged():
    model = _sharp_model("llama")
    ids, mask = left_pad(PROMPTS, pad_id=0)
    full = greedy_decode(model, ids, mask, 10, eos_id=2, pad_id=0)
    # row 1 is "complete" after 3 tokens, row 3 after 5
    stop_after = {tuple(full[1, :3].tolist()): 1, tuple(full[3, :5].tolist()): 3}
    cut = greedy_decode(model, ids, mask, 10, eos_id=2, pad_id=0,
                        finished=lambda tokens: tuple(tokens) in stop_after)
    assert torch.equal(cut[1, :3], full[1, :3]) and (cut[1, 3:] == 0).all()
    assert torch.equal(cut[3, :5], full[3, :5]) and (cut[3, 5:] == 0).all()
    for row in (0, 2, 4):
        assert torch.equal(cut[row], full[row])


def test_empty_batch_and_zero_new_tokens():
    model = _sharp_model("llama")
    ids, mask = left_pad(PROMPTS, pad_id=0)
    assert greedy_decode(model, ids, mask, 0, 2, 0).shape == (5, 0)
    assert greedy_decode(model, ids[:0], mask[:0], 4, 2, 0).shape == (0, 4)


SHARED = [[1, 7, 9, 5, 6, 7], [1, 7, 9, 8], [1, 7, 9, 10, 11, 12, 13, 14], [1, 7, 9, 15, 16],
          [1, 7, 9, 4, 4, 4, 4]]


def test_pad_after_prefix_lays_out_the_common_prefix_once_then_left_pads():
    ids, mask, shared = pad_after_prefix(SHARED, pad_id=0)
    assert shared == 3
    assert ids.tolist()[1] == [1, 7, 9, 0, 0, 0, 0, 8]
    assert mask.tolist()[1] == [1, 1, 1, 0, 0, 0, 0, 1]
    assert ids.tolist()[2] == [1, 7, 9, 10, 11, 12, 13, 14]
    # each row's real tokens, in order, are its prompt
    for row, seq in enumerate(SHARED):
        assert ids[row][mask[row].bool()].tolist() == seq
    # one token of the shortest row stays after the shared columns, even when it is all shared
    _, _, shared = pad_after_prefix([[1, 7, 9], [1, 7, 9, 4]], pad_id=0)
    assert shared == 2
    assert pad_after_prefix([[3, 1], [4, 1]], pad_id=0)[2] == 0


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_a_shared_prefix_run_once_gives_generates_tokens(arch):
    model = _sharp_model(arch)
    left, left_mask = left_pad(SHARED, pad_id=0)
    want = _generate(model, left, left_mask, 12, eos=None, pad=0)
    ids, mask, shared = pad_after_prefix(SHARED, pad_id=0)
    assert shared == 3
    got = greedy_decode(model, ids, mask, 12, eos_id=-1, pad_id=0, shared=shared)
    assert torch.equal(got, want)
    # the layout itself (pads between the prefix and the rest) is read right without sharing too
    assert torch.equal(greedy_decode(model, ids, mask, 12, eos_id=-1, pad_id=0), want)


def test_shared_must_name_real_common_columns():
    model = _sharp_model("llama")
    ids, mask, shared = pad_after_prefix(SHARED, pad_id=0)
    with pytest.raises(ValueError, match="shared=4"):
        greedy_decode(model, ids, mask, 4, 2, 0, shared=4)  # column 3 differs between rows
    with pytest.raises(ValueError, match="shared=8"):
        greedy_decode(model, ids, mask, 4, 2, 0, shared=8)  # nothing left to prefill
    with pytest.raises(ValueError, match="shared=-1"):
        greedy_decode(model, ids, mask, 4, 2, 0, shared=-1)


def test_evaluator_batches_by_length_and_returns_the_prompts_order():
    """Batches of two out of five prompts of different lengths: each completion is the one the
    prompt gets alone, in the order the prompts were given, for one copy and for stacked copies."""
    from corp.evaluate import TextEvaluator
    from corp.models import CharCodec

    class Task:
        name, max_new_tokens = "t", 6

    model, codec = _sharp_model("llama"), CharCodec()
    prompts = ["12+345=", "1=", "99*3=", "7+", "123456+7="]
    evaluator = TextEvaluator(Task(), codec, batch_size=2)
    alone = [evaluator.generate(model, [p])[0][0] for p in prompts]
    assert len(set(alone)) > 2, "the prompts must get different completions"
    assert evaluator.generate(model, prompts)[0] == alone
    stacked = evaluator.generate(model, prompts, copies=2)
    assert stacked == [alone, alone]
