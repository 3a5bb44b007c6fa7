"""Scoring a model (as it is, or with members applied) on a list of examples.

An evaluator maps (model, examples) to `Scores`: per-example reward, correctness and parsed answer.
`TextEvaluator` generates greedily (batched, left-padded) and asks the task for the reward; any
object with the same `__call__` works (tests use a weight-space task).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .models import CharCodec, HFCodec
from .tasks import Example


@dataclass
class Scores:
    rewards: np.ndarray  # float, one per example
    correct: np.ndarray  # bool, reward == 1
    answers: list  # parsed answers (None when unparseable), for voting

    @property
    def reward(self) -> float:
        return float(self.rewards.mean()) if len(self.rewards) else float("nan")

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self.correct) else float("nan")


def left_pad(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, attention mask) of token lists padded on the left, so generation continues every
    row from its last prompt token."""
    width = max(len(ids) for ids in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, seq in enumerate(encoded):
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return ids, mask


def pad_after_prefix(encoded: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor,
                                                                       int]:
    """(ids, attention mask, shared) for `greedy_decode`: the tokens every row starts with (a chat
    template's system turn: 24 of a math prompt's ~52 SmolLM2 tokens) come first, once per row
    and unpadded, then the rest of each row left-padded. `shared` counts the common columns; at
    least one token of every row stays after them, so that every row has a last prompt token."""
    shortest, shared = min(map(len, encoded), default=1), 0
    while shared < shortest - 1 and all(seq[shared] == encoded[0][shared] for seq in encoded):
        shared += 1
    rest, rest_mask = left_pad([seq[shared:] for seq in encoded], pad_id)
    head = torch.tensor([encoded[0][:shared]] * len(encoded), dtype=torch.long).reshape(
        len(encoded), shared)
    return (torch.cat([head, rest], 1), torch.cat([torch.ones_like(head), rest_mask], 1), shared)


@torch.no_grad()
def greedy_decode(model, ids: torch.Tensor, mask: torch.Tensor, max_new_tokens: int,
                  eos_id: int, pad_id: int, finished=None, shared: int = 0) -> torch.Tensor:
    """Greedy continuation of left-padded rows: (rows, max_new_tokens) new token ids on the CPU,
    EOS then `pad_id` after a row ends (what `model.generate(do_sample=False)` returns).

    Unlike `generate`, a row leaves the batch (its KV cache rows are dropped) as soon as it emits
    EOS or `finished(tokens so far)` is true, so the remaining rows run on a smaller batch: on a
    compute-bound CPU the cost is the tokens actually generated, not rows x max_new_tokens.
    Positions are counted from each row's first real token, as `generate` counts them.

    `shared`: the first `shared` columns are the same real tokens in every row (the layout of
    `pad_after_prefix`); they run once, on one row, and their keys and values are copied to every
    row, so a batch's prefill costs its distinct tokens only."""
    from transformers import DynamicCache
    rows = ids.shape[0]
    out = torch.full((rows, max_new_tokens), pad_id, dtype=torch.long)
    if rows == 0 or max_new_tokens == 0:
        return out
    if not 0 <= shared < ids.shape[1]:
        raise ValueError(f"shared={shared}: must leave at least one of the {ids.shape[1]} "
                         f"prompt columns after the shared ones")
    if shared and not (bool(mask[:, :shared].all()) and bool((ids[:, :shared] == ids[:1, :shared])
                                                                .all())):
        raise ValueError(f"shared={shared}: the first {shared} columns are not the same real "
                         f"tokens in every row (lay the rows out with pad_after_prefix)")
    live = torch.arange(rows)  # original row of each batch row
    position = (mask.long().cumsum(-1) - 1).clamp_(min=0)
    cache = DynamicCache()
    if shared:
        model(input_ids=ids[:1, :shared], attention_mask=mask[:1, :shared],
              position_ids=position[:1, :shared], past_key_values=cache, use_cache=True,
              logits_to_keep=1)
        cache.batch_repeat_interleave(rows)
    logits = model(input_ids=ids[:, shared:], attention_mask=mask,
                   position_ids=position[:, shared:], past_key_values=cache, use_cache=True,
                   logits_to_keep=1).logits[:, -1]
    position = position[:, -1:]
    for step in range(max_new_tokens):
        token = logits.argmax(-1)
        token_cpu = token.cpu()
        out[live, step] = token_cpu
        done = token_cpu == eos_id
        if finished is not None:
            for i in (~done).nonzero().flatten().tolist():
                done[i] = bool(finished(out[live[i], :step + 1].tolist()))
        if step == max_new_tokens - 1 or bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero().flatten()
            cache.batch_select_indices(keep.to(ids.device))
            live, token = live[keep], token[keep.to(token.device)]
            mask, position = mask[keep.to(mask.device)], position[keep.to(position.device)]
        mask = torch.cat([mask, mask.new_ones((mask.shape[0], 1))], dim=1)
        position = position + 1
        logits = model(input_ids=token[:, None], attention_mask=mask, position_ids=position,
                       past_key_values=cache, use_cache=True).logits[:, -1]
    return out


class TextEvaluator:
    """Greedy generation + the task's parser and reward. `forward_calls` is the number of forward
    passes one evaluation makes per batch (prefill + decode steps), used to pick a perturbation
    mode."""

    def __init__(self, task, codec: CharCodec | HFCodec, batch_size: int = 64,
                 max_new_tokens: int | None = None):
        self.task, self.codec, self.batch_size = task, codec, batch_size
        self.max_new_tokens = max_new_tokens or task.max_new_tokens

    @property
    def forward_calls(self) -> int:
        return self.max_new_tokens

    @torch.no_grad()
    def generate(self, model, prompts: list[str], copies: int = 1) -> list[list[str]]:
        """Completions of every prompt, for each of `copies` stacked copies of the batch (the
        population mode runs member p on copy p).

        Prompts are batched by length (fewer pad tokens to run), completions returned in the
        prompts' order. One copy runs `greedy_decode` with the batch's common prefix computed
        once, and a row leaves the batch as soon as it is finished (EOS, or the task's
        `answer_complete`); stacked copies keep every row in place (the population mode maps
        rows to members by position) and run `model.generate`."""
        encoded = [self.codec.encode_prompt(p) for p in prompts]
        device = next(model.parameters()).device
        complete = getattr(self.task, "answer_complete", None)
        finished = None
        if complete is not None:
            finished = lambda tokens: complete(self.codec.decode(tokens))  # noqa: E731
        by_length = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
        out: list[list] = [[None] * len(encoded) for _ in range(copies)]
        for start in range(0, len(by_length), self.batch_size):
            batch = by_length[start:start + self.batch_size]
            chunk = [encoded[i] for i in batch]
            if copies == 1:
                ids, mask, shared = pad_after_prefix(chunk, self.codec.pad_id)
                new = greedy_decode(model, ids.to(device), mask.to(device), self.max_new_tokens,
                                    self.codec.eos_id, self.codec.pad_id, finished, shared)
            else:
                ids, mask = left_pad(chunk, self.codec.pad_id)
                ids, mask = ids.repeat(copies, 1).to(device), mask.repeat(copies, 1).to(device)
                gen = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=self.max_new_tokens,
                                     pad_token_id=self.codec.pad_id,
                                     eos_token_id=self.codec.eos_id, top_p=None, top_k=None,
                                     temperature=None)
                new = gen[:, ids.shape[1]:].cpu()
            for row in range(new.shape[0]):
                copy, k = divmod(row, len(chunk))
                out[copy][batch[k]] = self.codec.decode(new[row].tolist())
        return out

    def rewards(self, answers: list, examples: list[Example]) -> np.ndarray:
        """The task's reward for each answer; a NaN or infinite one is an error naming the task
        and the prompt (it would scramble every ranking of members downstream)."""
        rewards = np.array([self.task.score(a, e) for a, e in zip(answers, examples)], dtype=float)
        bad = np.flatnonzero(~np.isfinite(rewards))
        if len(bad):
            i, name = int(bad[0]), getattr(self.task, "name", type(self.task).__name__)
            raise ValueError(f"task {name!r} gave reward {rewards[i]} to the answer "
                             f"{answers[i]!r} for prompt {examples[i].prompt[:200]!r} ({len(bad)} "
                             f"of {len(rewards)} rewards non-finite): rewards must be finite "
                             f"numbers; fix the task's score()")
        return rewards

    def score_completions(self, completions: list[str], examples: list[Example]) -> Scores:
        answers = [self.task.parse(c) for c in completions]
        rewards = self.rewards(answers, examples)
        return Scores(rewards, rewards >= 1.0, answers)

    def __call__(self, model, examples: list[Example]) -> Scores:
        completions = self.generate(model, [e.prompt for e in examples])[0]
        return self.score_completions(completions, examples)

    def population(self, model, examples: list[Example], copies: int) -> list[Scores]:
        completions = self.generate(model, [e.prompt for e in examples], copies)
        return [self.score_completions(c, examples) for c in completions]

    def score_answers(self, answers: list, examples: list[Example]) -> Scores:
        """Scores of given parsed answers (a majority vote's)."""
        rewards = self.rewards(answers, examples)
        return Scores(rewards, rewards >= 1.0, list(answers))
