"""Peak memory and time of consolidation: streaming (corp.scale.streaming) vs. the naive path.

A synthetic Llama-shaped safetensors checkpoint (random weights, sharded) stands in for a model
larger than the memory budget. The update is K seeded members with weights; both paths build a
rank-r factorization of every decoder linear weight and write a merged checkpoint:

- naive: load the whole model, materialize each layer's dense update sum_i w_i eps_i, factor it,
  add B @ A, save every shard from memory;
- streaming: `consolidate_streaming` with `max_memory`, one tensor at a time.

Each path runs in a fresh process; its peak RSS is that process's VmHWM, which includes the
~0.2 GiB that importing torch costs. (Not ru_maxrss: Linux carries the parent's resident size into a
child's ru_maxrss across exec, and this script's parent holds the checkpoint it just generated;
earlier results in this folder were inflated by that.) Prints a table and writes it to
benchmarks/results/.

    python benchmarks/bench_lowmem.py                      # 1.5B parameters, bf16, 2 GiB budget
    python benchmarks/bench_lowmem.py --params 2e8 --budget 512MiB   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from corp.scale.streaming import TensorEntry, parse_bytes, write_streaming  # noqa: E402

LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def llama_shapes(params: float, hidden: int = 2048, vocab: int = 32000):
    """Tensor names and shapes of a Llama-like model with about `params` parameters."""
    inter = int(hidden * 2.75) // 64 * 64
    per_layer = 4 * hidden * hidden + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    linear_shapes = dict(zip(LINEARS, [(hidden, hidden)] * 4 + [(inter, hidden)] * 2
                             + [(hidden, inter)]))
    shapes = [("model.embed_tokens.weight", (vocab, hidden))]
    for i in range(layers):
        p = f"model.layers.{i}."
        shapes += [(f"{p}{module}.weight", shape) for module, shape in linear_shapes.items()]
        shapes += [(p + "input_layernorm.weight", (hidden,)),
                   (p + "post_attention_layernorm.weight", (hidden,))]
    shapes += [("model.norm.weight", (hidden,)), ("lm_head.weight", (vocab, hidden))]
    return shapes


def make_checkpoint(path: str, params: float, dtype: str, shards: int) -> dict:
    marker = os.path.join(path, "bench.json")
    want = {"params": params, "dtype": dtype, "shards": shards}
    if os.path.exists(marker) and json.load(open(marker)) == want:
        return want
    os.makedirs(path, exist_ok=True)
    torch_dtype = {"BF16": torch.bfloat16, "F32": torch.float32, "F16": torch.float16}[dtype]
    size = torch.tensor([], dtype=torch_dtype).element_size()
    shapes = llama_shapes(params)
    total = sum(torch.Size(s).numel() for _, s in shapes) * size
    per_shard, groups, current, acc = total / shards, [], [], 0
    for name, shape in shapes:
        current.append((name, shape))
        acc += torch.Size(shape).numel() * size
        if acc >= per_shard * (len(groups) + 1) and len(groups) < shards - 1:
            groups.append(current)
            current = []
    groups.append(current)
    weight_map = {}
    gen = torch.Generator().manual_seed(0)
    for k, group in enumerate(groups):
        fname = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        entries, offset = [], 0
        for name, shape in group:
            n = torch.Size(shape).numel() * size
            entries.append(TensorEntry(name, fname, dtype, tuple(shape), offset, offset + n))
            offset += n
            weight_map[name] = fname
        write_streaming(os.path.join(path, fname), entries,
                        lambda e: (torch.randn(e.shape, generator=gen) * 0.02).to(torch_dtype),
                        {"format": "pt"})
    with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump({"note": "synthetic benchmark checkpoint"}, f)
    json.dump(want, open(marker, "w"))
    return want


_WORKER = r"""
import json, os, sys, time
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import corp_kernels as ck
from corp_kernels._memory import peak_rss_bytes
from corp.method.perturb import Member, parameter_key
from corp.method.population import member_seeds
method, model_dir, out, k, rank, budget = sys.argv[2:8]
k, rank, budget = int(k), int(rank), int(budget)
seeds = member_seeds(k, 0)
coeffs = np.random.default_rng(0).normal(size=k) * 1e-3 / np.sqrt(k)
update = Member(tuple(seeds), tuple(float(c) for c in coeffs))
index = json.load(open(os.path.join(model_dir, "model.safetensors.index.json")))["weight_map"]
names = [n for n in index if n.endswith("_proj.weight")]
ck.weighted_noise_sum((64, 64), [1], [1.0])  # loads the kernels' libraries: part of the floor
floor = peak_rss_bytes()
t = time.time()
if method == "streaming":
    from corp.scale.streaming import consolidate_streaming
    consolidate_streaming(model_dir, update, names, out, max_rank=rank, max_memory_bytes=budget,
                          merged="lowrank", progress=False)
else:  # naive: whole model in memory, dense update per layer
    from safetensors.torch import load_file, save_file
    files = sorted(set(index.values()))
    state = {}
    for f in files:
        state.update(load_file(os.path.join(model_dir, f)))
    for name in names:
        w = state[name]
        keys = [parameter_key(s, name) for s in update.seeds]
        delta = ck.weighted_noise_sum(tuple(w.shape), keys, list(update.coeffs))
        u, s, v = torch.svd_lowrank(delta, q=rank + 10, niter=0)
        root = s[:rank].sqrt()
        state[name] = (w.float() + (u[:, :rank] * root) @ (root[:, None] * v[:, :rank].T)
                       ).to(w.dtype)
        del delta
    os.makedirs(os.path.join(out, "merged-lowrank"), exist_ok=True)
    for f in files:
        save_file({n: state[n] for n, fn in index.items() if fn == f},
                  os.path.join(out, "merged-lowrank", f), metadata={"format": "pt"})
seconds = time.time() - t
print(json.dumps({"method": method, "seconds": seconds, "peak_rss": peak_rss_bytes(),
                  "floor_rss": floor}))
"""


def run(method: str, model_dir: str, out: str, k: int, rank: int, budget: int) -> dict:
    proc = subprocess.run([sys.executable, "-c", _WORKER, os.path.dirname(HERE), method,
                           model_dir, out, str(k), str(rank), str(budget)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1.5e9)
    ap.add_argument("--dtype", default="BF16", choices=["BF16", "F16", "F32"])
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--budget", default="2GiB")
    ap.add_argument("--members", type=int, default=50)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--workdir", default="/tmp/corp-bench-lowmem")
    ap.add_argument("--methods", nargs="+", default=["streaming", "naive"])
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    budget = parse_bytes(args.budget)
    model_dir = os.path.join(args.workdir, "model")
    t = time.time()
    make_checkpoint(model_dir, args.params, args.dtype, args.shards)
    size = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
               if f.endswith(".safetensors"))
    n_params = sum(torch.Size(s).numel() for _, s in llama_shapes(args.params))
    print(f"checkpoint: {n_params / 1e9:.2f}B parameters, {args.dtype}, {size / 2**30:.2f} GiB "
          f"({time.time() - t:.0f} s to make or find)")
    rows = []
    for method in args.methods:
        r = run(method, model_dir, os.path.join(args.workdir, method), args.members, args.rank,
                budget)
        rows.append(r)
        print(f"  {method}: {r['seconds']:.0f} s, peak RSS {r['peak_rss'] / 2**30:.2f} GiB",
              flush=True)
    base = next((r for r in rows if r["method"] == "naive"), None)
    lines = [f"# Consolidation memory: streaming vs. naive ({platform.machine()}, "
             f"{torch.get_num_threads()} threads)", "",
             f"`python benchmarks/bench_lowmem.py --params {args.params:g} --dtype {args.dtype} "
             f"--budget {args.budget} --members {args.members} --rank {args.rank}`", "",
             f"Synthetic Llama-shaped checkpoint: {n_params / 1e9:.2f}B parameters, {args.dtype}, "
             f"{size / 2**30:.2f} GiB in {args.shards} shards; budget {args.budget}; "
             f"K = {args.members} members, rank {args.rank}; every decoder linear weight gets "
             f"factors and a merged shard.", "",
             "| method | peak RSS (GiB) | peak RSS / model size | of which torch + kernels "
             "loaded (GiB) | wall-clock (s) | time vs. naive |", "|---|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['seconds'] / base['seconds']:.2f}x" if base else "-"
        lines.append(f"| {r['method']} | {r['peak_rss'] / 2**30:.2f} | "
                     f"{r['peak_rss'] / size:.3f} | {r['floor_rss'] / 2**30:.2f} | "
                     f"{r['seconds']:.0f} | {ratio} |")
    text = "\n".join(lines) + "\n"
    print(text)
    os.makedirs(args.out, exist_ok=True)
    name = f"lowmem-{platform.machine()}-{args.params:g}-{args.dtype}.md"
    with open(os.path.join(args.out, name), "w") as f:
        f.write(text)


if __name__ == "__main__":
    main()
