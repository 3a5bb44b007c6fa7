"""A cheap gradient baseline: reward-weighted fine-tuning on the same train prompts.

Sample `samples` completions per train prompt from the model (temperature sampling), score them
with the task, and take `steps` AdamW steps on the completions' negative log-likelihood weighted
by their advantage (reward minus the mean reward of that prompt's samples, negatives dropped):
rejection-sampling fine-tuning in its simplest form. It runs on a copy of the model, which it
returns; the caller's model is untouched.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import torch

from ..evaluate import left_pad

log = logging.getLogger("corp")


def reward_weighted_finetune(model, evaluator, examples, samples: int = 4, steps: int = 4,
                             lr: float = 1e-5, temperature: float = 0.8, seed: int = 0,
                             micro_batch: int = 8):
    codec, task = evaluator.codec, evaluator.task
    torch.manual_seed(seed)
    prompts = [e.prompt for e in examples]
    rows = []  # (prompt ids, completion ids, weight)
    device = next(model.parameters()).device
    with torch.no_grad():
        encoded = [codec.encode_prompt(p) for p in prompts]
        ids, mask = left_pad(encoded, codec.pad_id)
        width = ids.shape[1]
        gen = model.generate(input_ids=ids.repeat(samples, 1).to(device),
                             attention_mask=mask.repeat(samples, 1).to(device), do_sample=True,
                             temperature=temperature, top_p=1.0, top_k=0,
                             max_new_tokens=evaluator.max_new_tokens, pad_token_id=codec.pad_id,
                             eos_token_id=codec.eos_id)[:, width:].cpu()
    rewards = np.zeros((samples, len(examples)))
    completions = []
    for row in range(gen.shape[0]):
        s, e = divmod(row, len(examples))
        tokens = gen[row].tolist()
        if codec.eos_id in tokens:
            tokens = tokens[:tokens.index(codec.eos_id) + 1]
        text = codec.decode(tokens)
        rewards[s, e] = task.score(task.parse(text), examples[e])
        completions.append((e, tokens))
    advantage = np.clip(rewards - rewards.mean(axis=0, keepdims=True), 0, None)
    for row, (e, tokens) in enumerate(completions):
        w = advantage[row // len(examples), e]
        if w > 0 and tokens:
            rows.append((encoded[e], tokens, float(w)))
    info = {"sampled_reward": float(rewards.mean()), "training_sequences": len(rows)}
    tuned = copy.deepcopy(model)
    if not rows:
        log.info("reward-weighted fine-tuning: no sample beat its prompt's mean; model unchanged")
        return tuned.eval(), info
    tuned.train()
    opt = torch.optim.AdamW(tuned.parameters(), lr=lr, weight_decay=0.0)
    total_w = sum(w for _, _, w in rows)
    for step in range(steps):
        opt.zero_grad()
        loss_value = 0.0
        for start in range(0, len(rows), micro_batch):
            chunk = rows[start:start + micro_batch]
            seqs = [p + c for p, c, _ in chunk]
            width = max(map(len, seqs))
            x = torch.full((len(seqs), width), codec.pad_id, dtype=torch.long)
            labels = torch.full((len(seqs), width), -100, dtype=torch.long)
            m = torch.zeros_like(x)
            for i, (p, c, _) in enumerate(chunk):
                x[i, :len(p) + len(c)] = torch.tensor(p + c)
                labels[i, len(p):len(p) + len(c)] = torch.tensor(c)
                m[i, :len(p) + len(c)] = 1
            logits = tuned(input_ids=x.to(device), attention_mask=m.to(device)).logits[:, :-1]
            target = labels[:, 1:].to(device)
            nll = torch.nn.functional.cross_entropy(logits.float().transpose(1, 2), target,
                                                    ignore_index=-100, reduction="none")
            per_seq = nll.sum(1) / (target != -100).sum(1).clamp(min=1)
            weights = torch.tensor([w for _, _, w in chunk], device=device) / total_w
            loss = (per_seq * weights).sum()
            loss.backward()
            loss_value += loss.item()
        opt.step()
        log.info("reward-weighted fine-tuning: step %d/%d, weighted NLL %.4f", step + 1, steps,
                 loss_value)
    info["final_weighted_nll"] = loss_value
    return tuned.eval(), info
