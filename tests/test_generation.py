"""greedy_decode, the evaluator's generation loop: the same tokens as `model.generate` (greedy),
rows retired from the batch as they finish without changing the rows that go on."""

import pytest
import torch

from corp.evaluate import greedy_decode, left_pad
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
