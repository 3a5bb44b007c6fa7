"""How a member is run: in place vs fused vs population, per member, on tiny Llama decoders.

Prints a table of seconds per member (greedy generation of `--new-tokens` tokens for `--prompts`
prompts) and the ratio against in place, for two model widths. This is the measurement behind
corp.method.perturb.Perturber.choose_mode.

    .venv/bin/python -m benchmarks.bench_modes
"""

from __future__ import annotations

import argparse
import time

import torch

from corp.evaluate import TextEvaluator
from corp.models import build_tiny_model
from corp.method.perturb import Member, PerturbationSpec, Perturber
from corp.tasks import AdditionTask


def time_mode(pert, ev, prompts, mode, members, repeats=3):
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        if mode == "population":
            with pert.population(members):
                ev.generate(pert.model, prompts, len(members))
        else:
            for m in members:
                with pert.run(m, mode):
                    ev.generate(pert.model, prompts)
        best = min(best, time.perf_counter() - t)
    return best / len(members)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--members", type=int, default=16)
    args = parser.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    task = AdditionTask()
    prompts = [e.prompt for e in task.splits()["train"][:args.prompts]]
    print(f"| hidden | layers | perturbed weights | inplace s/member | fused (x inplace) | "
          f"population of {args.members} (x inplace) |")
    print("|---|---|---|---|---|---|")
    for hidden, layers in ((64, 2), (512, 4)):
        lm = build_tiny_model("llama", hidden=hidden, layers=layers)
        pert = Perturber(lm.model, PerturbationSpec())
        ev = TextEvaluator(task, lm.codec, max_new_tokens=args.new_tokens)
        members = [Member.single(s, 1e-3) for s in range(args.members)]
        times = {mode: time_mode(pert, ev, prompts, mode, members)
                 for mode in ("inplace", "fused", "population")}
        base = times["inplace"]
        print(f"| {hidden} | {layers} | {pert.numel} | {base:.4f} | "
              f"{base / times['fused']:.2f}x | {base / times['population']:.2f}x |")


if __name__ == "__main__":
    main()
