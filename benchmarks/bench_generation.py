"""What a member evaluation costs on SmolLM2-135M (CPU), and what each way to cut it does to the
base model's test score (issue 12: "at least 1.5x fewer seconds per member-prompt with the same
base-model test score").

Variants, each generating the math task's test prompts with the base model:
- `generate`: transformers' model.generate (greedy), what corp used before;
- `greedy_decode`: corp.evaluate.greedy_decode, rows leave the batch as they finish (EOS), the same
  tokens by construction (checked here row by row);
- `greedy_decode, no system prompt`: an empty system turn instead of SmolLM2's 16-token default;
- `greedy_decode, max_new_tokens 40 / 32`: shorter answers.
Seconds per prompt are measured with generate and greedy_decode alternated in each repeat (so a
busy machine affects both alike); the score of each variant is paired against `generate` on the
same prompts (mean difference and its 95% interval).

    .venv/bin/python -m benchmarks.bench_generation [--test 200] [--repeats 3] [--out FILE.md]
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
    from corp.evaluate import greedy_decode, left_pad
    from corp.models import HFCodec, load_model
    from corp.tasks import load_task
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--test", type=int, default=200, help="test prompts (math task)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3, help="alternated timing repeats")
    p.add_argument("--timing-prompts", type=int, default=64)
    p.add_argument("--out", default="benchmarks/results/generation-smollm2-cpu.md")
    args = p.parse_args(argv)

    lm = load_model(smollm2_dir(), verify=False)
    model, codec = lm.model, lm.codec
    nosys = HFCodec(codec.tokenizer, system_prompt="")
    task = load_task("math", n_train=64, n_val=200, n_test=args.test)
    test = task.splits()["test"]

    def run(kind, examples, new=48, the_codec=codec):
        tokens = []
        for start in range(0, len(examples), args.batch):
            chunk = [the_codec.encode_prompt(e.prompt) for e in examples[start:start + args.batch]]
            ids, mask = left_pad(chunk, codec.pad_id)
            if kind == "generate":
                out = model.generate(input_ids=ids, attention_mask=mask, do_sample=False,
                                     max_new_tokens=new, pad_token_id=codec.pad_id,
                                     eos_token_id=codec.eos_id, top_p=None, top_k=None,
                                     temperature=None)[:, ids.shape[1]:]
                out = torch.nn.functional.pad(out, (0, new - out.shape[1]), value=codec.pad_id)
            else:
                out = greedy_decode(model, ids, mask, new, codec.eos_id, codec.pad_id)
            tokens += out.tolist()
        return tokens

    def score(tokens, examples):
        return np.array([task.score(task.parse(codec.decode(t)), e)
                         for t, e in zip(tokens, examples)])

    # 1. time: generate vs greedy_decode alternated on the same prompts
    timing = test[:args.timing_prompts]
    seconds = {"generate": [], "greedy_decode": []}
    with torch.no_grad():
        run("greedy", timing[:8])  # warm-up
        for _ in range(args.repeats):
            for kind in seconds:
                t = time.perf_counter()
                run(kind, timing)
                seconds[kind].append((time.perf_counter() - t) / len(timing))

    # 2. score (and one timed pass) of every variant on the whole test split
    variants = [("generate", "generate", 48, codec), ("greedy_decode", "greedy", 48, codec),
                ("greedy_decode, no system prompt", "greedy", 48, nosys),
                ("greedy_decode, max_new_tokens 40", "greedy", 40, codec),
                ("greedy_decode, max_new_tokens 32", "greedy", 32, codec)]
    rows, base_scores, base_tokens = [], None, None
    with torch.no_grad():
        for label, kind, new, the_codec in variants:
            t = time.perf_counter()
            tokens = run(kind, test, new, the_codec)
            per_prompt = (time.perf_counter() - t) / len(test)
            s = score(tokens, test)
            if base_scores is None:
                base_scores, base_tokens = s, tokens
            d = s - base_scores
            half = 1.96 * d.std(ddof=1) / np.sqrt(len(d)) if len(d) > 1 else float("nan")
            lengths = [next((i + 1 for i, x in enumerate(row) if x == codec.eos_id), len(row))
                       for row in tokens]
            same = sum(a == b for a, b in zip(tokens, base_tokens)) if new == 48 and \
                the_codec is codec else None
            rows.append((label, per_prompt, s.mean(), d.mean(), half, np.mean(lengths),
                         np.mean([n == new for n in lengths]), same))

    g, q = statistics.median(seconds["generate"]), statistics.median(seconds["greedy_decode"])
    lines = [
        "# Generation cost on SmolLM2-135M-Instruct (CPU)", "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch "
        f"{torch.__version__}; math task, {len(test)} test prompts, batch {args.batch}, float32. "
        f"Reproduce: `.venv/bin/python -m benchmarks.bench_generation`.", "",
        f"Side by side ({args.repeats} alternated repeats on {len(timing)} prompts, median): "
        f"generate {g:.3f} s/prompt, greedy_decode {q:.3f} s/prompt: **{g / q:.2f}x**.", "",
        "| variant | s/prompt (one pass) | test accuracy | paired diff vs generate [95% CI] | "
        "new tokens / row | rows at the limit | rows token-identical to generate |",
        "|---|---|---|---|---|---|---|"]
    for label, sec, acc, diff, half, length, at_limit, same in rows:
        lines.append(f"| {label} | {sec:.3f} | {acc:.3f} | {diff:+.3f} [{diff - half:+.3f}, "
                     f"{diff + half:+.3f}] | {length:.1f} | {at_limit:.0%} | "
                     f"{'-' if same is None else f'{same}/{len(test)}'} |")
    lines += ["", "The one-pass column is a single timing each (a busy machine moves it); the "
              "side-by-side ratio above is the measurement.", ""]
    text = "\n".join(lines)
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
