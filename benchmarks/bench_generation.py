"""What a member evaluation costs on SmolLM2-135M (CPU), and what each way to cut it does to the
base model's test score (issue 12: "at least 1.5x fewer seconds per member-prompt with the same
base-model test score").

Timed side by side on one member's worth of prompts (the first `--timing-prompts` test prompts,
one batch), alternated in every repeat so that a busy machine slows all of them alike:
- `generate, batch 16`: transformers' model.generate (greedy) at batch 16, the setting of the
  issue's measurement (~0.45 s per math prompt);
- `generate`: the same at `--batch`;
- `greedy_decode`: corp.evaluate.greedy_decode on left-padded rows: a row leaves the batch when
  it emits EOS;
- `evaluator`: what corp runs now (TextEvaluator.generate): prompts batched by length, the
  prefix every prompt shares (the chat template's system turn) computed once per batch and its
  keys/values copied to every row, then greedy_decode.
Then each variant, and the ways that change what is generated (an empty system turn, fewer new
tokens), generates the whole test split: its score is paired against `generate` on the same
prompts (mean difference and 95% interval), and the exact ones are checked token by token.

    .venv/bin/python -m benchmarks.bench_generation [--task math] [--test 200] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch


def main(argv=None) -> int:
    from corp.builtin import smollm2_dir
    from corp.evaluate import TextEvaluator, greedy_decode, left_pad
    from corp.models import HFCodec, load_model
    from corp.tasks import load_task
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="math", help="a text task: math, countdown, writing, code")
    p.add_argument("--test", type=int, default=200, help="test prompts")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternated timing repeats")
    p.add_argument("--timing-prompts", type=int, default=64,
                   help="prompts per timed pass (a member scores 64 train prompts)")
    p.add_argument("--out", default=None,
                   help="markdown file (default benchmarks/results/generation-smollm2-cpu"
                        "[-TASK].md)")
    args = p.parse_args(argv)
    out_file = args.out or ("benchmarks/results/generation-smollm2-cpu.md" if args.task == "math"
                            else f"benchmarks/results/generation-smollm2-cpu-{args.task}.md")

    lm = load_model(smollm2_dir(), verify=False)
    model, codec = lm.model, lm.codec
    nosys = HFCodec(codec.tokenizer, system_prompt="")
    task = load_task(args.task, n_train=64, n_val=200, n_test=args.test)
    test = task.splits()["test"]
    limit = task.max_new_tokens

    def run(kind, examples, new=limit, the_codec=codec, batch=args.batch):
        """The completion of every example, in order, as text (what the task parses; the
        evaluator returns text, so every variant is compared as text)."""
        if kind == "evaluator":
            evaluator = TextEvaluator(task, the_codec, batch_size=batch, max_new_tokens=new)
            return evaluator.generate(model, [e.prompt for e in examples])[0]
        texts = []
        for start in range(0, len(examples), batch):
            chunk = [the_codec.encode_prompt(e.prompt) for e in examples[start:start + batch]]
            ids, mask = left_pad(chunk, codec.pad_id)
            if kind == "generate":
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=new, pad_token_id=codec.pad_id,
                                     eos_token_id=codec.eos_id, top_p=None, top_k=None,
                                     temperature=None)[:, ids.shape[1]:]
                out = torch.nn.functional.pad(out, (0, new - out.shape[1]), value=codec.pad_id)
            else:
                out = greedy_decode(model, ids, mask, new, codec.eos_id, codec.pad_id)
            texts += [codec.decode(row) for row in out.tolist()]
        return texts

    def score(texts, examples):
        return np.array([task.score(task.parse(t), e) for t, e in zip(texts, examples)])

    # 1. time: the variants alternated on the same prompts, one member's worth
    timing = test[:args.timing_prompts]
    timed = [("generate, batch 16", "generate", 16), ("generate", "generate", args.batch),
             ("greedy_decode", "greedy", args.batch), ("evaluator", "evaluator", args.batch)]
    seconds = {label: [] for label, _, _ in timed}
    with torch.no_grad():
        run("evaluator", timing[:8])  # warm-up
        for _ in range(args.repeats):
            for label, kind, batch in timed:
                t = time.perf_counter()
                run(kind, timing, batch=batch)
                seconds[label].append((time.perf_counter() - t) / len(timing))

    # 2. score (and one timed pass) of every variant on the whole test split
    variants = [("generate", "generate", limit, codec), ("greedy_decode", "greedy", limit, codec),
                ("evaluator", "evaluator", limit, codec),
                ("evaluator, no system prompt", "evaluator", limit, nosys)]
    variants += [(f"evaluator, max_new_tokens {n}", "evaluator", n, codec)
                 for n in (limit - 8, limit - 16)]
    rows, base_scores, base_texts = [], None, None
    with torch.no_grad():
        for label, kind, new, the_codec in variants:
            t = time.perf_counter()
            texts = run(kind, test, new, the_codec)
            per_prompt = (time.perf_counter() - t) / len(test)
            s = score(texts, test)
            if base_scores is None:
                base_scores, base_texts = s, texts
            d = s - base_scores
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            # tokens of the completion text, re-tokenized (EOS not counted)
            lengths = [len(codec.tokenizer(t, add_special_tokens=False)["input_ids"])
                       for t in texts]
            exact = new == limit and the_codec is codec
            same = sum(a == b for a, b in zip(texts, base_texts)) if exact else None
            rows.append((label, per_prompt, s.mean(), d.mean(), half, np.mean(lengths),
                         np.mean([n >= new for n in lengths]), same))

    base = statistics.median(seconds["generate"])
    lines = [
        f"# Generation cost on SmolLM2-135M-Instruct (CPU), {args.task}", "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; {args.task} task (max_new_tokens {limit}), {len(test)} test "
        f"prompts, batch {args.batch}, float32. Reproduce: `.venv/bin/python -m "
        f"benchmarks.bench_generation --task {args.task}`.", "",
        f"Side by side: {args.repeats} alternated repeats on {len(timing)} prompts (one member's "
        f"worth), median seconds per member-prompt, and how many times fewer than each "
        f"baseline:", "",
        "| variant | s / member-prompt | x fewer than generate, batch 16 | x fewer than "
        f"generate, batch {args.batch} |", "|---|---|---|---|"]
    first = statistics.median(seconds["generate, batch 16"])
    for label, _, _ in timed:
        m = statistics.median(seconds[label])
        lines.append(f"| {label} | {m:.3f} | {first / m:.2f}x | {base / m:.2f}x |")
    lines += [
        "", "Every variant on the whole test split (one timed pass each; a busy machine moves "
        "this column, the table above is the measurement):", "",
        "| variant | s/prompt (one pass) | test reward (mean) | paired diff vs generate [95% CI] | "
        "new tokens / row | rows at the limit | completions identical to generate |",
        "|---|---|---|---|---|---|---|"]
    for label, sec, acc, diff, half, length, at_limit, same in rows:
        lines.append(f"| {label} | {sec:.3f} | {acc:.3f} | {diff:+.3f} [{diff - half:+.3f}, "
                     f"{diff + half:+.3f}] | {length:.1f} | {at_limit:.0%} | "
                     f"{'-' if same is None else f'{same}/{len(test)}'} |")
    lines.append("")
    text = "\n".join(lines)
    print(text)
    from corp.outputs import write_atomic
    write_atomic(out_file, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
