"""Members on tiny Llama / Qwen2 models: keys, fused == in place, population, exact restore."""

import pytest
import torch

import corp_kernels as ck
from corp.models import build_tiny_model
from corp.method.perturb import (Member, PerturbationSpec, Perturber, parameter_key,
                          state_fingerprint)

ARCHS = ["llama", "qwen2"]


def test_parameter_key_test_vector():
    # Pinned: changing the derivation changes every population ever logged.
    assert parameter_key(0, "model.layers.0.self_attn.q_proj.weight") == 0xEF4BFE68493EF556
    assert parameter_key(2**64 - 1, "lm_head.weight") == 0xFC539EA74730CC67
    assert parameter_key(12345, "a") != parameter_key(12345, "b")
    assert parameter_key(1, "a") != parameter_key(2, "a")


@pytest.mark.parametrize("seed", [-1, 2**64, 1.0, True])
def test_parameter_key_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="member seed"):
        parameter_key(seed, "w")


def test_same_shaped_parameters_get_independent_noise():
    lm = build_tiny_model("llama")
    p = Perturber(lm.model, PerturbationSpec())
    names = [n for n, w in p.params if tuple(w.shape) == (64, 64)]
    assert len(names) >= 2
    a, b = (ck.gaussian_noise((64, 64), parameter_key(7, n)) for n in names[:2])
    cos = (a * b).sum() / (a.norm() * b.norm())
    assert abs(cos.item()) < 0.05  # ~1/64 for independent noise; identical noise would give 1


def test_key_does_not_depend_on_the_rest_of_the_spec():
    lm = build_tiny_model("llama")
    name = "model.layers.1.mlp.down_proj.weight"
    small = Perturber(lm.model, PerturbationSpec(parameters=(name,)))
    full = Perturber(lm.model, PerturbationSpec(include_embeddings=True, include_norms=True))
    fp = state_fingerprint(lm.model)
    weights = []
    for pert in (small, full):
        with pert.inplace(Member.single(99, 0.5)):
            weights.append(dict(lm.model.named_parameters())[name].detach().clone())
        assert state_fingerprint(lm.model) == fp
    assert torch.equal(weights[0], weights[1])


def test_default_spec_selects_decoder_linear_weights_only():
    lm = build_tiny_model("qwen2")
    names = [n for n, _ in PerturbationSpec().select(lm.model)]
    assert names and all(n.startswith("model.layers.") and n.endswith("proj.weight")
                         for n in names)
    opt = [n for n, _ in PerturbationSpec(include_embeddings=True, include_norms=True,
                                          include_lm_head=True).select(lm.model)]
    assert "model.embed_tokens.weight" in opt and "lm_head.weight" in opt
    assert "model.norm.weight" in opt


@pytest.mark.parametrize("bad, match", [
    (dict(sigma=0.0), "sigma"), (dict(sigma=-1e-3), "sigma"), (dict(sigma=float("inf")), "sigma"),
    (dict(parameters=("model.nope.weight",)), "unknown parameter"),
])
def test_spec_rejects_bad_input(bad, match):
    lm = build_tiny_model("llama")
    with pytest.raises(ValueError, match=match):
        PerturbationSpec(**bad).select(lm.model)


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_fused_equals_inplace_and_model_is_unchanged(arch):
    lm = build_tiny_model(arch, seed=3)
    pert = Perturber(lm.model, PerturbationSpec(sigma=0.05))
    ids = torch.randint(3, lm.codec.vocab_size, (3, 11), generator=torch.Generator().manual_seed(0))
    base = _logits(lm.model, ids)
    fp = state_fingerprint(lm.model)
    for seed in (1, 2**64 - 2):
        member = Member.single(seed, 0.05)
        with pert.inplace(member):
            inplace = _logits(lm.model, ids)
        assert state_fingerprint(lm.model) == fp
        with pert.fused(member):
            fused = _logits(lm.model, ids)
        assert state_fingerprint(lm.model) == fp
        torch.testing.assert_close(fused, inplace, rtol=1e-4, atol=1e-4)
        assert (fused - base).abs().max() > 1e-3  # the member really is different
    assert torch.equal(_logits(lm.model, ids), base)


@pytest.mark.parametrize("arch", ARCHS)
def test_population_forward_equals_each_member(arch):
    lm = build_tiny_model(arch, seed=4)
    pert = Perturber(lm.model, PerturbationSpec())
    ids = torch.randint(3, lm.codec.vocab_size, (2, 9), generator=torch.Generator().manual_seed(1))
    members = [Member.single(s, g) for s, g in ((5, 0.02), (6, 0.05), (7, 0.01))]
    with pert.population(members):
        together = _logits(lm.model, ids.repeat(len(members), 1))
    for p, member in enumerate(members):
        with pert.inplace(member):
            alone = _logits(lm.model, ids)
        torch.testing.assert_close(together[2 * p:2 * p + 2], alone, rtol=1e-4, atol=1e-4)


def test_multi_seed_member_inplace_is_one_rounding_of_the_weighted_sum():
    lm = build_tiny_model("llama")
    name = "model.layers.0.self_attn.o_proj.weight"
    pert = Perturber(lm.model, PerturbationSpec(parameters=(name,)))
    w = dict(lm.model.named_parameters())[name]
    before = w.detach().clone()
    member = Member((11, 12, 13), (0.1, -0.2, 0.05))
    with pert.inplace(member):
        got = w.detach().clone()
    keys = [parameter_key(s, name) for s in member.seeds]
    expected = before + ck.weighted_noise_sum(w.shape, keys, member.coeffs, backend="torch")
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert torch.equal(w, before)


def test_bf16_restore_is_exact_where_subtracting_noise_is_not():
    lm = build_tiny_model("llama")
    lm.model.to(torch.bfloat16)
    pert = Perturber(lm.model, PerturbationSpec())
    fp = state_fingerprint(lm.model)
    member = Member.single(42, 1e-3)
    with pert.inplace(member):
        pass
    assert state_fingerprint(lm.model) == fp
    # What the reference does instead: add then subtract the same noise. Not exact in bf16.
    name, w = pert.params[0]
    original = w.detach().clone()
    ck.add_noise_(w.data, parameter_key(42, name), 1e-3)
    ck.add_noise_(w.data, parameter_key(42, name), -1e-3)
    assert not torch.equal(w, original)
    w.data.copy_(original)


def test_fused_modes_refuse_what_they_cannot_run():
    lm = build_tiny_model("llama")
    pert = Perturber(lm.model, PerturbationSpec(include_norms=True))
    with pytest.raises(ValueError, match="nn.Linear"):
        with pert.fused(Member.single(1, 0.01)):
            pass
    pert = Perturber(lm.model, PerturbationSpec())
    with pytest.raises(ValueError, match="single-seed"):
        with pert.fused(Member((1, 2), (0.1, 0.1))):
            pass
    assert pert.choose_mode(1, 8, single_seed=False) == "inplace"
    with pytest.raises(ValueError, match="coeffs"):
        Member((1, 2), (0.1,))


def test_choose_mode_by_device_and_size(monkeypatch):
    small = Perturber(build_tiny_model("llama", hidden=64, layers=2).model, PerturbationSpec())
    large = Perturber(build_tiny_model("llama", hidden=512, layers=4).model, PerturbationSpec())
    assert small.choose_mode(16, 8) == "population"  # 74k weights x 16 <= 8M
    assert large.choose_mode(16, 8) == "inplace"  # 9.4M weights: population lost on the CPU
    assert large.choose_mode(1, 1) == "fused"
    monkeypatch.setattr(Perturber, "on_cuda", lambda self: True)
    assert large.choose_mode(16, 8) == "population"  # on a GPU it won at 0.44B
    assert large.choose_mode(1, 8) == "inplace"
    assert large.choose_mode(16, 8, single_seed=False) == "inplace"


def test_fused_and_population_modes_keep_the_linear_biases():
    # Qwen2's q/k/v projections have biases, initialised to zero: with zeros, a fused forward
    # that dropped them would still match. Give them values.
    lm = build_tiny_model("qwen2", seed=5)
    with torch.no_grad():
        biased = [m for m in lm.model.modules()
                  if isinstance(m, torch.nn.Linear) and m.bias is not None]
        assert biased, "the tiny Qwen2 must have biased projections"
        for i, m in enumerate(biased):
            m.bias.copy_(torch.linspace(-1, 1, m.bias.numel()) * (1 + i % 3))
    pert = Perturber(lm.model, PerturbationSpec())
    ids = torch.randint(3, lm.codec.vocab_size, (2, 9), generator=torch.Generator().manual_seed(2))
    members = [Member.single(s, 0.03) for s in (8, 9)]
    alone = []
    for member in members:
        with pert.inplace(member):
            alone.append(_logits(lm.model, ids))
        with pert.fused(member):
            torch.testing.assert_close(_logits(lm.model, ids), alone[-1], rtol=1e-4, atol=1e-4)
    with pert.population(members):
        together = _logits(lm.model, ids.repeat(len(members), 1))
    for p in range(len(members)):
        torch.testing.assert_close(together[2 * p:2 * p + 2], alone[p], rtol=1e-4, atol=1e-4)


def test_choose_mode_boundaries_and_its_log_line(caplog):
    pert = Perturber(build_tiny_model("llama", hidden=64, layers=2).model, PerturbationSpec())
    n = pert.numel
    with caplog.at_level("INFO", logger="corp"):
        assert pert.choose_mode(2, 8) == "population"  # two members are already a population
        assert pert.choose_mode(2, 8) == "population"  # logged once per mode
        pert.numel = 4_000_000
        assert pert.choose_mode(2, 8) == "population"  # exactly 8M weights x members: still
        pert.numel = 4_000_001
        assert pert.choose_mode(2, 8) == "inplace"
        assert pert.choose_mode(1, 1) == "fused"  # one forward pass
        assert pert.choose_mode(1, 2) == "inplace"  # two passes: generating noise twice loses
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("perturbation")]
    assert lines == [
        f"perturbation mode: population (2 members together, 8 forward calls each, {n} "
        "perturbed weights)",
        "perturbation mode: inplace (2 members together, 8 forward calls each, 4000001 "
        "perturbed weights)",
        "perturbation mode: fused (1 members together, 1 forward calls each, 4000001 "
        "perturbed weights)"]
    norms = Perturber(build_tiny_model("llama", hidden=64, layers=2).model,
                      PerturbationSpec(include_norms=True))
    caplog.clear()
    with caplog.at_level("INFO", logger="corp"):
        assert norms.choose_mode(4, 1) == "inplace"  # norms are not nn.Linear: no fused mode
    assert caplog.records[-1].getMessage().endswith(
        "perturbed weights, not all nn.Linear weights)")


def test_fused_refusal_names_the_parameters_that_are_not_linear_weights():
    lm = build_tiny_model("llama", layers=4)
    pert = Perturber(lm.model, PerturbationSpec(include_norms=True))
    others = [n for n, _ in pert.params if "norm" in n]
    assert len(others) > 5
    with pytest.raises(ValueError) as err:
        with pert.fused(Member.single(1, 0.01)):
            pass
    assert str(err.value) == ("fused modes need every perturbed parameter to be an nn.Linear "
                              f"weight; this spec also perturbs {others[:5]}")
    with pytest.raises(ValueError) as err:
        with Perturber(lm.model, PerturbationSpec()).population([Member((1, 2), (0.1, 0.1))]):
            pass
    assert str(err.value) == ("fused modes run single-seed members; use mode='inplace' for "
                              "combinations of seeds")


def test_run_picks_the_mode_it_is_given():
    lm = build_tiny_model("llama", seed=3)
    pert = Perturber(lm.model, PerturbationSpec())
    ids = torch.randint(3, lm.codec.vocab_size, (2, 7), generator=torch.Generator().manual_seed(3))
    member = Member.single(4, 0.05)
    fp = state_fingerprint(lm.model)
    with pert.run(member, "inplace"):
        assert state_fingerprint(lm.model) != fp  # the weights themselves carry the member
        inplace = _logits(lm.model, ids)
    with pert.run(member, "fused"):
        assert state_fingerprint(lm.model) == fp  # weights untouched: the forward adds the noise
        torch.testing.assert_close(_logits(lm.model, ids), inplace, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError) as err:
        pert.run(member, "population")
    assert str(err.value) == ("mode must be 'inplace' or 'fused' for one member, got "
                              "'population'")
