"""Models and text codecs: built-in tiny models (offline, for tests and the default run) and any
local Hugging Face model directory.

A codec turns prompts into token ids and completions back into text. Built-in tiny models use a
character codec so that they need no tokenizer files; a Hugging Face directory uses its own
tokenizer and, when it has one, its chat template.
"""

from __future__ import annotations

import json
import os
import string
from dataclasses import dataclass

import torch

TINY_ARCHS = ("llama", "qwen2")
CHAR_CODEC_FILE = "corp_char_codec.json"


class CharCodec:
    """One token per character of a fixed alphabet; ids 0/1/2 are pad/bos/eos."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, alphabet: str = string.digits + "+-*=?:() ,.abcdefghijklmnopqrstuvwxyz"):
        self.alphabet = alphabet
        self._ids = {ch: i + 3 for i, ch in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 3

    def encode_prompt(self, text: str) -> list[int]:
        unknown = sorted({ch for ch in text if ch not in self._ids})
        if unknown:
            raise ValueError(f"characters {unknown} are not in the tiny model's alphabet")
        return [self.bos_id] + [self._ids[ch] for ch in text]

    def encode_target(self, text: str) -> list[int]:
        return [self._ids[ch] for ch in text] + [self.eos_id]

    def decode(self, ids) -> str:
        out = []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i >= 3:
                out.append(self.alphabet[i - 3])
        return "".join(out)

    def save(self, directory: str) -> None:
        with open(os.path.join(directory, CHAR_CODEC_FILE), "w") as f:
            json.dump({"alphabet": self.alphabet}, f)


class HFCodec:
    """A Hugging Face tokenizer; prompts go through the chat template when the tokenizer has one."""

    def __init__(self, tokenizer, use_chat_template: bool = True, system_prompt: str | None = None):
        """`system_prompt`: None keeps the template's own (SmolLM2's inserts a 16-token default);
        a string, "" included, replaces it."""
        self.tokenizer, self.system_prompt = tokenizer, system_prompt
        self.use_chat_template = use_chat_template and bool(getattr(tokenizer, "chat_template",
                                                                    None))
        pad = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = pad if pad is not None else self.eos_id

    def encode_prompt(self, text: str) -> list[int]:
        if self.use_chat_template:
            turns = [{"role": "user", "content": text}]
            if self.system_prompt is not None:
                turns.insert(0, {"role": "system", "content": self.system_prompt})
            ids = self.tokenizer.apply_chat_template(turns, add_generation_prompt=True,
                                                     tokenize=True)
            # transformers 5 returns a BatchEncoding here, 4.x a plain list
            return list(ids["input_ids"] if hasattr(ids, "keys") else ids)
        return list(self.tokenizer(text)["input_ids"])

    def encode_target(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) + [self.eos_id]

    def decode(self, ids) -> str:
        return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=True)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    codec: CharCodec | HFCodec
    source: str  # what was loaded, for logs and configs


def tiny_config(arch: str, vocab_size: int, hidden: int = 64, layers: int = 2):
    """A small random decoder of the given family, built offline from a config."""
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=128, tie_word_embeddings=False,
                  pad_token_id=CharCodec.pad_id, bos_token_id=CharCodec.bos_id,
                  eos_token_id=CharCodec.eos_id)
    if arch == "llama":
        from transformers import LlamaConfig
        return LlamaConfig(**common)
    if arch == "qwen2":
        from transformers import Qwen2Config
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {TINY_ARCHS}")


def build_tiny_model(arch: str = "llama", seed: int = 0, hidden: int = 64, layers: int = 2,
                     codec: CharCodec | None = None) -> LoadedModel:
    from transformers import AutoModelForCausalLM
    codec = codec or CharCodec()
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, codec.vocab_size, hidden, layers))
    model.eval()
    return LoadedModel(model, codec, f"tiny-{arch}(seed={seed})")


def load_model(path: str, dtype: torch.dtype = torch.float32, device: str = "cpu",
               verify: bool = True) -> LoadedModel:
    """A local Hugging Face model directory (no hub access). A directory saved by corp for a tiny
    model carries its character codec.

    A folder a corp command wrote (it has a manifest, or its run folder's record manages it) loads
    only if it is one complete committed run: every file in its manifest, with its hash, and
    nothing else (corp.outputs.verify_folder; `verify=False` skips this). A run folder that a
    command killed while committing left unsettled is recovered first (corp.outputs.settle)."""
    from .outputs import settle, verify_folder, why_missing
    if verify:
        settle(path)  # a killed commit may have moved the committed folder aside
    if not os.path.isdir(path):
        raise ValueError(f"model directory {path!r} does not exist{why_missing(path)} (corp "
                         f"never downloads models)")
    if verify:
        verify_folder(path)
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=True)
    model.to(device).eval()
    char_file = os.path.join(path, CHAR_CODEC_FILE)
    if os.path.exists(char_file):
        with open(char_file) as f:
            codec = CharCodec(json.load(f)["alphabet"])
    else:
        from transformers import AutoTokenizer
        codec = HFCodec(AutoTokenizer.from_pretrained(path, local_files_only=True))
    return LoadedModel(model, codec, os.path.abspath(path))


def save_model(loaded: LoadedModel, directory: str) -> None:
    os.makedirs(directory, exist_ok=True)
    loaded.model.save_pretrained(directory)
    if isinstance(loaded.codec, CharCodec):
        loaded.codec.save(directory)
    else:
        loaded.codec.tokenizer.save_pretrained(directory)
