"""End-to-end population-search throughput: members per second of greedy generation, per mode.

    python -m benchmarks.bench_search_throughput --out search.json            # ~0.5B Llama, GPU
    python -m benchmarks.bench_search_throughput --size tiny --device cpu ...  # smoke check

A randomly initialised Llama (weights do not change the cost of a forward pass) generates
`--new-tokens` tokens for each of `--prompts` prompts per member. Modes, side by side in one run:

- `user_loop`: what a user writes without this library: keep a copy of the weights, then for each
  member add sigma * torch.randn (a torch.Generator seeded per parameter) to every perturbed weight,
  generate, and copy the weights back.
- `inplace`: corp's Perturber.inplace (the same loop, noise from corp_kernels.add_noise_).
- `fused`: Perturber.fused (every nn.Linear calls perturbed_linear; noise regenerated per call).
- `population-P`: Perturber.population, P members in one batched generate (population_linear).

Every mode must leave the weights bit for bit unchanged (checked), and all modes see the same
prompts and token counts. Reported: seconds per member and members/s, and each mode's ratio to the
user loop.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import sys
import time

import torch

SIZES = {
    # ~0.47B parameters: 24 layers of width 1024 (MLP 4096), 32k vocabulary, untied head.
    "0.5b": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                 num_attention_heads=16, num_key_value_heads=8, vocab_size=32000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, vocab_size=97),
}


def build_model(size: str, device: str, dtype: torch.dtype):
    from transformers import AutoModelForCausalLM, LlamaConfig
    config = LlamaConfig(**SIZES[size], max_position_embeddings=512, tie_word_embeddings=False,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    # Built directly on the device in its dtype: a 0.5B fp32 init on the host takes longer than
    # the benchmark.
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


class SearchBench:
    """The same prompts, the same perturbed weights and the same token count for every mode."""

    def __init__(self, model, prompts: int, prompt_len: int, new_tokens: int, sigma: float):
        from corp.method.perturb import PerturbationSpec, Perturber
        self.model, self.new_tokens, self.sigma = model, new_tokens, sigma
        self.device = next(model.parameters()).device
        g = torch.Generator().manual_seed(1)
        vocab = model.config.vocab_size
        self.ids = torch.randint(3, vocab, (prompts, prompt_len), generator=g).to(self.device)
        self.perturber = Perturber(model, PerturbationSpec(sigma=sigma))

    def generate(self, copies: int = 1) -> torch.Tensor:
        ids = self.ids.repeat(copies, 1)
        # min_new_tokens = max_new_tokens: a random model must not stop early at EOS.
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  do_sample=False, max_new_tokens=self.new_tokens,
                                  min_new_tokens=self.new_tokens, pad_token_id=0,
                                  eos_token_id=None, top_p=None, top_k=None, temperature=None)
        assert out.shape[1] == ids.shape[1] + self.new_tokens
        return out

    def user_loop(self, seeds: list[int]) -> None:
        params = self.perturber.params
        backup = [p.detach().clone() for _, p in params]
        with torch.no_grad():
            for seed in seeds:
                for i, (_, p) in enumerate(params):
                    g = torch.Generator(device=p.device).manual_seed(seed * 100_003 + i)
                    p.add_(self.sigma * torch.randn(p.shape, generator=g, device=p.device,
                                                    dtype=p.dtype))
                self.generate()
                for (_, p), saved in zip(params, backup):
                    p.copy_(saved)

    def corp_single(self, seeds: list[int], mode: str) -> None:
        from corp.method.perturb import Member
        for seed in seeds:
            with self.perturber.run(Member.single(seed, self.sigma), mode):
                self.generate()

    def corp_population(self, seeds: list[int], size: int, strategy: str | None = None) -> None:
        """`strategy` forces population_linear's strategy (fused or chunked) for the run."""
        from corp.method.perturb import Member
        from corp_kernels._chunked import strategy_forced
        with strategy_forced(strategy) if strategy else contextlib.nullcontext():
            for start in range(0, len(seeds), size):
                members = [Member.single(s, self.sigma) for s in seeds[start:start + size]]
                with self.perturber.population(members):
                    self.generate(len(members))


def measure(bench: SearchBench, modes: dict, members: int, device: str) -> list[dict]:
    from corp.method.perturb import state_fingerprint
    before = state_fingerprint(bench.model)
    rows = []
    for name, run in modes.items():
        run(list(range(10_000, 10_000 + members["warmup"][name])))  # compile, allocate, warm
        sync(device)
        count = members["timed"][name]
        start = time.perf_counter()
        run(list(range(count)))
        sync(device)
        seconds = time.perf_counter() - start
        if state_fingerprint(bench.model) != before:
            raise AssertionError(f"mode {name} left the weights changed")
        rows.append({"mode": name, "members": count, "seconds": seconds,
                     "s_per_member": seconds / count, "members_per_s": count / seconds})
        print(f"  {name:15s} {count:3d} members  {seconds / count:8.3f} s/member  "
              f"{count / seconds:7.2f} members/s", flush=True)
    base = next(r for r in rows if r["mode"] == "user_loop")["members_per_s"]
    for r in rows:
        r["x_user_loop"] = r["members_per_s"] / base
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="0.5b")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["bfloat16", "float32"], default=None,
                        help="default: bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--members", type=int, default=4, help="timed members per single mode")
    parser.add_argument("--population", type=int, nargs="*", default=[8, 16],
                        help="population sizes P to time (P members timed for each)")
    parser.add_argument("--population-fused", type=int, nargs="*", default=[],
                        help="population sizes to time again with every population_linear call "
                             "fused (prefill included), to check the dispatcher's rule end to end")
    parser.add_argument("--modes", nargs="*", default=None,
                        help="subset of user_loop inplace fused population (default: all)")
    parser.add_argument("--out", default=None, help="results JSON")
    args = parser.parse_args(argv)
    for flag in ("prompts", "prompt_len", "new_tokens", "members"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1")
    if any(p < 1 for p in args.population + args.population_fused):
        parser.error("--population sizes must be >= 1")
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda")
                                          else "float32"))
    started = time.time()
    model = build_model(args.size, args.device, dtype)
    n_params = sum(p.numel() for p in model.parameters())
    bench = SearchBench(model, args.prompts, args.prompt_len, args.new_tokens, sigma=1e-3)
    wanted = set(args.modes or ["user_loop", "inplace", "fused", "population"])
    wanted.add("user_loop")  # the baseline every ratio is against
    modes, warmup, timed = {}, {}, {}
    for name in ("user_loop", "inplace", "fused"):
        if name in wanted:
            modes[name] = bench.user_loop if name == "user_loop" else \
                (lambda seeds, m=name: bench.corp_single(seeds, m))
            warmup[name], timed[name] = 1, args.members
    if "population" in wanted:
        for size in args.population:
            name = f"population-{size}"
            modes[name] = lambda seeds, s=size: bench.corp_population(seeds, s)
            warmup[name], timed[name] = size, size
        for size in args.population_fused:
            name = f"population-{size}-all-fused"
            modes[name] = lambda seeds, s=size: bench.corp_population(seeds, s, "fused")
            warmup[name], timed[name] = size, size
    print(f"search throughput: {args.size} Llama ({n_params / 1e9:.3f}B parameters, "
          f"{bench.perturber.numel / 1e9:.3f}B perturbed), {dtype}, {args.device}; "
          f"{args.prompts} prompts x {args.new_tokens} new tokens per member", flush=True)
    rows = measure(bench, modes, {"warmup": warmup, "timed": timed}, args.device)
    device_name = (torch.cuda.get_device_name() if args.device.startswith("cuda")
                   else f"cpu-{platform.machine()}-{torch.get_num_threads()}threads")
    result = {"device": device_name, "dtype": str(dtype), "torch": torch.__version__,
              "size": args.size, "parameters": n_params, "perturbed": bench.perturber.numel,
              "prompts": args.prompts, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens, "seconds": time.time() - started, "rows": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
