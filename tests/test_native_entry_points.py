"""The ops behave on empty inputs, and the C++ entry points check what they read.

Python validates arguments before dispatch, but `torch.ops.corp_cpu.*` can be called directly (and
torch.compile or a future caller may do so): those ops must raise a clear error, never read past
a short `seeds` tensor or divide by zero. Before: population_linear read P seeds and sigmas from
tensors that had fewer, and a weight with zero rows killed the process with SIGFPE."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import corp_kernels as ck


def _reference_linear(x, weight, bias):
    """x @ W.T + b with sigma = 0: the exact answer for every empty case."""
    y = x.float() @ weight.float().T
    return y + bias.float() if bias is not None else y


@pytest.mark.parametrize("n, k, t", [(0, 8, 3), (5, 0, 3), (5, 8, 0)],
                         ids=["no-out-features", "no-in-features", "no-tokens"])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_ops_on_empty_dimensions(backend_device, n, k, t, with_bias):
    backend, device = backend_device
    x = torch.randn(t, k, device=device)
    weight = torch.randn(n, k, device=device)
    bias = torch.randn(n, device=device) if with_bias else None
    y = ck.perturbed_linear(x, weight, bias, 1, 0.0, backend=backend)
    expected = _reference_linear(x, weight, bias)
    assert y.shape == (t, n)
    torch.testing.assert_close(y.float(), expected)
    xp = x[None].expand(2, t, k).contiguous()
    yp = ck.population_linear(xp, weight, bias, [1, 2], [0.0, 0.0], backend=backend)
    assert yp.shape == (2, t, n)
    torch.testing.assert_close(yp.float(), expected.expand(2, t, n))


def test_noise_ops_on_empty_shapes(backend_device):
    backend, device = backend_device
    assert ck.gaussian_noise((0, 5), 1, device=device, backend=backend).shape == (0, 5)
    assert ck.add_noise_(torch.zeros(0, 3, device=device), 1, 0.1, backend=backend).shape == (0, 3)
    assert ck.weighted_noise_sum((0, 5), [1], [1.0], device=device,
                                 backend=backend).shape == (0, 5)
    left = ck.noise_sketch((0, 5), [1], [1.0], torch.randn(3, 0, device=device), side="left",
                           backend=backend)
    assert left.shape == (3, 5) and not left.any()  # an empty sum of rows is zero
    right = ck.noise_sketch((4, 0), [1], [1.0], torch.randn(0, 3, device=device), side="right",
                            backend=backend)
    assert right.shape == (4, 3) and not right.any()
    gram = ck.noise_gram((0,), [1, 2], device=device, backend=backend)
    assert gram.shape == (2, 2) and not gram.any()


# Direct calls of the C++ ops with arguments Python would have refused. Each runs in one child
# process so that a crash (SIGFPE, SIGSEGV) fails this test with its name instead of killing pytest.
DIRECT_CALLS = {
    "population_linear: fewer seeds than members": (
        "ops.population_linear(torch.randn(3, 2, 4), torch.randn(5, 4), None, torch.tensor([1]), "
        "torch.tensor([0.1, 0.1, 0.1]), 0)", "seeds has 1 entries, expected 3"),
    "population_linear: fewer sigmas than members": (
        "ops.population_linear(torch.randn(3, 2, 4), torch.randn(5, 4), None, "
        "torch.tensor([1, 2, 3]), torch.tensor([0.1]), 0)", "sigmas has 1 entries, expected 3"),
    "perturbed_linear: in_features mismatch": (
        "ops.perturbed_linear(torch.randn(2, 3), torch.randn(5, 4), None, 1, 0, 0.1)",
        "last dim 3 != weight's in_features 4"),
    "perturbed_linear: 1-D weight": (
        "ops.perturbed_linear(torch.randn(2, 4), torch.randn(4), None, 1, 0, 0.1)",
        "weight must be 2-D"),
    "perturbed_linear: bias of the wrong size": (
        "ops.perturbed_linear(torch.randn(2, 4), torch.randn(5, 4), torch.randn(3), 1, 0, 0.1)",
        "bias must be [5]"),
    "perturbed_linear: integer x": (
        "ops.perturbed_linear(torch.ones(2, 4, dtype=torch.long), torch.randn(5, 4), None, 1, 0, "
        "0.1)", "must be floating point"),
    "noise_sketch: test matrix of the wrong shape": (
        "ops.noise_sketch(6, 5, torch.tensor([1]), torch.tensor([1.0]), torch.randn(3, 4), True, 0)",
        "test_matrix must be [r, rows]"),
    "noise_sketch: weights shorter than seeds": (
        "ops.noise_sketch(6, 5, torch.tensor([1, 2]), torch.tensor([1.0]), torch.randn(5, 3), "
        "False, 0)", "weights has 1 entries, expected 2"),
    "weighted_noise_sum: weights shorter than seeds": (
        "ops.weighted_noise_sum([4, 4], torch.tensor([1, 2]), torch.tensor([1.0]), 0)",
        "weights has 1 entries, expected 2"),
    "noise_gram: no seeds": ("ops.noise_gram(10, torch.tensor([], dtype=torch.long), 0)",
                             "seeds must be 1-D and non-empty"),
    "perturbed_linear: zero out_features": (
        "ops.perturbed_linear(torch.randn(2, 4), torch.randn(0, 4), None, 1, 0, 0.1).shape", None),
    "population_linear: zero out_features": (
        "ops.population_linear(torch.randn(2, 3, 4), torch.randn(0, 4), None, torch.tensor([1, 2]),"
        " torch.tensor([0.1, 0.1]), 0).shape", None),
    "perturbed_linear: zero in_features": (
        "ops.perturbed_linear(torch.randn(2, 0), torch.randn(5, 0), None, 1, 0, 0.1).shape", None),
}

CHILD = textwrap.dedent("""
    import json, sys, torch
    import corp_kernels  # loads the extension
    ops = torch.ops.corp_cpu
    for name, (call, _) in json.loads(sys.argv[1]).items():
        print("CALL", name, flush=True)
        try:
            value = eval(call)
            print("RESULT", json.dumps({"name": name, "ok": True, "value": repr(value)}), flush=True)
        except Exception as exc:
            print("RESULT", json.dumps({"name": name, "ok": False, "error": str(exc)}), flush=True)
""")


@pytest.mark.skipif(not ck.backends()["cpp"].available, reason="C++ extension not built")
def test_cpp_entry_points_check_what_they_read():
    proc = subprocess.run([sys.executable, "-c", CHILD, json.dumps(DIRECT_CALLS)],
                          capture_output=True, text=True, timeout=120)
    lines = proc.stdout.splitlines()
    if proc.returncode != 0:
        last_call = [line for line in lines if line.startswith("CALL")][-1:]
        pytest.fail(f"the child died (rc {proc.returncode}) during {last_call}: {proc.stderr[-800:]}")
    results = {r["name"]: r for r in (json.loads(line[7:]) for line in lines
                                      if line.startswith("RESULT"))}
    assert set(results) == set(DIRECT_CALLS)
    for name, (_, message) in DIRECT_CALLS.items():
        result = results[name]
        if message is None:
            assert result["ok"], f"{name}: {result.get('error')}"
        else:
            assert not result["ok"], f"{name}: accepted, returned {result.get('value')}"
            assert message in result["error"], f"{name}: {result['error'][:300]}"
