"""The ops as torch ops: opcheck, torch.compile on the CPU path, backend reporting."""

import os

import pytest
import torch

import corp_kernels as ck
from corp_kernels import dispatch
from corp_kernels.ops import (_add_noise_op, _gaussian_noise_op, _noise_gram_op, _noise_sketch_op,
                              _perturbed_linear_op, _population_linear_op, _weighted_noise_sum_op)


def test_backends_report_reasons():
    status = ck.backends()
    assert set(status) == {"torch", "cpp", "triton", "cuda"}
    assert status["torch"].available
    for s in status.values():
        assert s.reason


@pytest.mark.skipif(os.environ.get("CORP_KERNELS_REQUIRE_CPP") != "1",
                    reason="set CORP_KERNELS_REQUIRE_CPP=1 where the C++ build must have worked")
def test_cpp_extension_built():
    assert dispatch.backends()["cpp"].available, dispatch.backends()["cpp"].reason


def test_cpu_default_is_cpp_when_built():
    expected = "cpp" if dispatch.backends()["cpp"].available else "torch"
    assert dispatch.resolve(None, torch.device("cpu"), "perturbed_linear") == expected


OPCHECK_CASES = {
    "gaussian_noise": (_gaussian_noise_op, ([3, 5], 7, 2, torch.float32, torch.device("cpu"))),
    "add_noise_": (_add_noise_op, (torch.zeros(4, 6), 7, 0.5, 3)),
    "weighted_noise_sum": (_weighted_noise_sum_op, (
        [4, 6], torch.tensor([1, 2]), torch.tensor([0.5, 1.0], dtype=torch.float64), 0,
        torch.device("cpu"))),
    "perturbed_linear": (_perturbed_linear_op, (torch.randn(2, 6), torch.randn(4, 6),
                                                torch.randn(4), 3, 0.1, 0)),
    "population_linear": (_population_linear_op, (
        torch.randn(2, 3, 6), torch.randn(4, 6), None, torch.tensor([1, 2]),
        torch.tensor([0.1, 0.2], dtype=torch.float64), 0)),
    "noise_sketch": (_noise_sketch_op, ([5, 6], torch.tensor([1, 2]),
                                        torch.tensor([0.5, 1.0], dtype=torch.float64),
                                        torch.randn(6, 3), False, 0)),
    "noise_gram": (_noise_gram_op, (30, torch.tensor([1, 2, 9]), 5, torch.device("cpu"))),
}


@pytest.mark.parametrize("name", list(OPCHECK_CASES))
@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_opcheck(name, backend):
    if not dispatch.backends()[backend].available:
        pytest.skip(dispatch.backends()[backend].reason)
    op, args = OPCHECK_CASES[name]
    torch.library.opcheck(op, (*args, backend))


@pytest.mark.parametrize("backend", ["torch", "cpp"])
def test_torch_compile_cpu(backend):
    if not dispatch.backends()[backend].available:
        pytest.skip(dispatch.backends()[backend].reason)
    torch._dynamo.reset()

    def layer(x, w, b):
        h = ck.perturbed_linear(x, w, b, 11, 0.05, backend=backend)
        return torch.relu(h) + ck.gaussian_noise(h.shape, 5, backend=backend)

    x, w, b = torch.randn(3, 8), torch.randn(6, 8), torch.randn(6)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x, w, b), layer(x, w, b))


def test_import_survives_a_broken_extension():
    """A native library that fails to load: import works, the default falls back to torch with a
    warning, and asking for the broken backend by name raises with the reason."""
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent("""
        import sys, warnings

        class Broken:
            def find_spec(self, name, path=None, target=None):
                if name == "corp_kernels._C":
                    raise ImportError("simulated: undefined symbol")
                return None

        sys.meta_path.insert(0, Broken())
        import corp_kernels as ck
        status = ck.backends()["cpp"]
        assert not status.available and "simulated: undefined symbol" in status.reason, status
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ck.gaussian_noise((4,), 1)
        assert any("using the torch reference" in str(w.message) for w in caught), caught
        try:
            ck.gaussian_noise((4,), 1, backend="cpp")
        except RuntimeError as exc:
            assert "simulated: undefined symbol" in str(exc)
        else:
            raise AssertionError("backend='cpp' did not raise")
        print("ok")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("ok")


def test_cpu_ops_do_not_load_dynamo_or_triton():
    """torch.library.custom_op's first call imports torch._dynamo and triton (~1.4 s, ~145 MiB
    resident); the ops are declared so that CPU use loads neither (low-memory consolidation
    counts on it)."""
    import subprocess
    import sys
    script = ("import sys, corp_kernels as ck\n"
              "ck.weighted_noise_sum((8, 8), [1, 2], [0.5, 0.25])\n"
              "x = ck.perturbed_linear(__import__('torch').randn(2, 8), "
              "__import__('torch').randn(4, 8), None, 3, 0.1)\n"
              "print(sorted(m for m in sys.modules if m == 'triton' or "
              "m.startswith('torch._dynamo')))\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", result.stdout


def test_backward_through_an_op_names_the_op():
    x = torch.randn(2, 6, requires_grad=True)
    y = ck.perturbed_linear(x, torch.randn(4, 6), None, 3, 0.1)
    with pytest.raises(RuntimeError, match="perturbed_linear has no gradient"):
        y.sum().backward()


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("strategy", ["fused", "chunked"])
@pytest.mark.parametrize("tokens", [1, 3, 17, 130])
def test_cpp_ops_keep_the_callers_grad_and_inference_mode_on_every_thread(two_threads, monkeypatch,
                                                                          tokens, strategy):
    """at::parallel_for's workers do not inherit grad/inference mode: an ATen op there on x that
    requires grad, or on an output made in inference mode, was refused (T = 2-15 since the
    few-token layout stopped copying x; T = 1 and noise_sketch before that). Each strategy is
    forced: the dispatcher sends a W this small to the chunked one."""
    if not dispatch.backends()["cpp"].available:
        pytest.skip("the C++ extension is not built")
    monkeypatch.setenv("CORP_KERNELS_LINEAR_STRATEGY", strategy)
    w = torch.randn(40, 6)
    x = torch.randn(tokens, 6)
    expected = ck.perturbed_linear(x, w, None, 3, 0.1, backend="cpp")
    expected_population = ck.population_linear(torch.stack([x, x]), w, None, [3, 4], 0.1,
                                                backend="cpp")
    x_grad = x.clone().requires_grad_()
    torch.testing.assert_close(ck.perturbed_linear(x_grad, w, None, 3, 0.1, backend="cpp"),
                               expected, rtol=0, atol=0)
    with torch.inference_mode():
        torch.testing.assert_close(ck.perturbed_linear(x, w, None, 3, 0.1, backend="cpp"),
                                   expected, rtol=0, atol=0)
        population = ck.population_linear(torch.stack([x, x]), w, None, [3, 4], 0.1,
                                          backend="cpp")
    torch.testing.assert_close(population, expected_population, rtol=0, atol=0)
    # Forced to one strategy, a member of the population is the single call, bit for bit, except
    # that chunked multiplies one member with F.linear and a population with torch.mm per member.
    exact = strategy == "fused"
    torch.testing.assert_close(population[0], expected, rtol=0 if exact else 1e-5,
                               atol=0 if exact else 1e-6)
    test_matrix = torch.randn(6, 3)
    for side, tm in (("right", test_matrix), ("left", torch.randn(3, 40))):
        sketch = ck.noise_sketch((40, 6), [1, 2], [0.5, -1.0], tm, side=side, backend="cpp")
        with torch.inference_mode():
            again = ck.noise_sketch((40, 6), [1, 2], [0.5, -1.0], tm, side=side, backend="cpp")
        torch.testing.assert_close(again, sketch, rtol=0, atol=0)
        graded = ck.noise_sketch((40, 6), [1, 2], [0.5, -1.0], tm.clone().requires_grad_(),
                                 side=side, backend="cpp")
        torch.testing.assert_close(graded.detach(), sketch, rtol=0, atol=0)
    with torch.inference_mode():
        gram = ck.noise_gram((40, 6), [1, 2, 3], backend="cpp")
    torch.testing.assert_close(gram, ck.noise_gram((40, 6), [1, 2, 3], backend="cpp"))


# --- eager calls of the matmul ops skip the dispatcher only where nothing could tell -------------

def _spy_on_bodies(monkeypatch):
    """Count the direct calls of the matmul ops' bodies (the op path does not go through here)."""
    from corp_kernels import ops
    direct = []
    for op in (ops._perturbed_linear_op, ops._population_linear_op):
        body = ops._BODIES[op]
        def spy(*args, body=body, name=op.name()):
            direct.append(name)
            return body(*args)
        monkeypatch.setitem(ops._BODIES, op, spy)
    return direct


def test_eager_matmul_ops_call_their_bodies_directly_with_the_ops_results(monkeypatch):
    from corp_kernels import ops
    x, b = torch.randn(3, 8), torch.randn(6)
    w = torch.nn.Parameter(torch.randn(6, 8))  # a module's weight: still a direct call
    xs = torch.stack([x, 2 * x])
    seeds, sigmas = torch.tensor([11, 12]), torch.tensor([0.05, 0.1], dtype=torch.float64)
    with torch.no_grad():  # the ops themselves, called by hand
        backend = dispatch.resolve(None, x.device, "perturbed_linear")
        expected = (ops._perturbed_linear_op(x, w, b, 11, 0.05, 0, backend),
                    ops._population_linear_op(xs, w, b, seeds, sigmas, 0, backend))
    direct = _spy_on_bodies(monkeypatch)
    with torch.no_grad():
        got = (ck.perturbed_linear(x, w, b, 11, 0.05),
               ck.population_linear(xs, w, b, [11, 12], [0.05, 0.1]))
    with torch.inference_mode():
        ck.perturbed_linear(x, w, b, 11, 0.05)
    ck.perturbed_linear(x, w.detach(), b, 11, 0.05)  # grad mode, but nothing requires grad
    assert direct == ["corp_kernels::perturbed_linear", "corp_kernels::population_linear"] + \
        ["corp_kernels::perturbed_linear"] * 2
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=0, atol=0)


def test_matmul_ops_go_through_the_dispatcher_when_something_could_tell(monkeypatch):
    from torch._subclasses.fake_tensor import FakeTensorMode
    direct = _spy_on_bodies(monkeypatch)
    # Autograd would record the call: the op's backward must be there to name the op.
    x = torch.randn(2, 8, requires_grad=True)
    y = ck.perturbed_linear(x, torch.randn(4, 8), None, 3, 0.1)
    with pytest.raises(RuntimeError, match="perturbed_linear has no gradient"):
        y.sum().backward()
    # A parameter that requires grad, under grad mode, likewise.
    w = torch.nn.Parameter(torch.randn(4, 8))
    assert ck.population_linear(torch.randn(1, 2, 8), w, None, [3], 0.1).grad_fn is not None
    # Fake tensors (tracing, shape propagation): the fake implementation answers.
    with FakeTensorMode():
        fake = ck.population_linear(torch.randn(2, 3, 8), torch.randn(4, 8), None, [1, 2], 0.1)
    assert fake.shape == (2, 3, 4) and type(fake).__name__ == "FakeTensor"
    # A dispatch mode over plain tensors (here one that logs every op it sees) sees the op.
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Log.seen.append(str(func))
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Log():
        ck.perturbed_linear(torch.randn(2, 8), torch.randn(4, 8), None, 3, 0.1)
    assert "corp_kernels.perturbed_linear.default" in Log.seen, Log.seen
    # Meta tensors (shape inference without data): the fake implementation answers.
    meta = ck.perturbed_linear(torch.empty(2, 8, device="meta"), torch.empty(4, 8, device="meta"),
                               None, 3, 0.1)
    assert meta.shape == (2, 4) and meta.is_meta
    # Forward-mode AD: the op path (no tangent through a body that never saw the dual level).
    import torch.autograd.forward_ad as fwAD
    with torch.no_grad(), fwAD.dual_level():
        dual = fwAD.make_dual(torch.randn(2, 8), torch.randn(2, 8))
        ck.perturbed_linear(dual, torch.randn(4, 8), None, 3, 0.1)
    # The profiler records the op by name.
    with torch.no_grad(), torch.profiler.profile(
            activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        ck.perturbed_linear(torch.randn(2, 8), torch.randn(4, 8), None, 3, 0.1)
    assert "corp_kernels::perturbed_linear" in {e.name for e in prof.events()}
    assert direct == []
