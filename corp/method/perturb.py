"""How a population member touches a model.

A member's perturbation is a lazy combination of seeded noises, delta = sum_j coeffs[j] * eps(seeds[j]);
a RandOpt member is one seed with coefficient sigma. Parameter `name` of member seed s gets the noise
of key `parameter_key(s, name)`, element i at stream position i (corp_kernels' noise contract), so

- two parameters of the same shape get independent noise (the reference RandOpt code seeds every
  tensor with the member seed itself, which gives them identical noise), and
- a parameter's noise does not change when other parameters are added to or removed from the spec.

Three ways to run a member, all leaving the model bit for bit unchanged afterwards:
- "inplace": W <- round(W + delta) once, evaluate, then copy W back from a backup taken once per
  Perturber (exact; subtracting the noise again is not exact in low precision). Noise is generated
  once per member, so this is the fast way when a member runs many forward passes (generation).
- "fused": each perturbed nn.Linear calls corp_kernels.perturbed_linear (the model's weights are
  never copied, at most a block of a few MiB per call; noise regenerated in every forward call).
  Single-seed members, linear weights only.
- "population": P single-seed members in one batched forward, each perturbed nn.Linear calling
  population_linear on the batch split into P equal parts (weight tiles shared by all members).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import types
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

import corp_kernels as ck

log = logging.getLogger("corp")

U64 = 1 << 64
_KEY_PERSON = b"corp-pkey-v1"  # blake2b personalization: a new version gets new noise


def parameter_key(member_seed: int, name: str) -> int:
    """Philox key of parameter `name` for member seed `member_seed` (both unchanged forever):
    the first 8 bytes, little-endian, of BLAKE2b(digest_size=8, person=b"corp-pkey-v1") over
    member_seed as 8 little-endian bytes followed by the UTF-8 parameter name."""
    if isinstance(member_seed, bool) or not isinstance(member_seed, int) \
            or not 0 <= member_seed < U64:
        raise ValueError(f"member seed must be an int in [0, 2**64), got {member_seed!r}")
    digest = hashlib.blake2b(member_seed.to_bytes(8, "little") + name.encode("utf-8"),
                             digest_size=8, person=_KEY_PERSON).digest()
    return int.from_bytes(digest, "little")


@dataclass(frozen=True)
class Member:
    """delta = sum_j coeffs[j] * eps(seeds[j]) on every perturbed parameter."""

    seeds: tuple[int, ...]
    coeffs: tuple[float, ...]

    def __post_init__(self):
        if len(self.seeds) != len(self.coeffs) or not self.seeds:
            raise ValueError(f"a member needs as many coeffs as seeds, and at least one; got "
                             f"{len(self.seeds)} seeds and {len(self.coeffs)} coeffs")

    @classmethod
    def single(cls, seed: int, sigma: float) -> "Member":
        return cls((int(seed),), (float(sigma),))

    @property
    def is_single(self) -> bool:
        return len(self.seeds) == 1


@dataclass(frozen=True)
class PerturbationSpec:
    """Which parameters are perturbed, and the default sigma (absolute, not relative to |W|).

    Default: the weights of the decoder's nn.Linear layers. Embeddings, norms (and other 1-D
    parameters) and the LM head are opt-in; `parameters` lists exact names instead.
    """

    sigma: float = 1e-3
    include_embeddings: bool = False
    include_norms: bool = False
    include_lm_head: bool = False
    parameters: tuple[str, ...] | None = None

    def __post_init__(self):
        if not isinstance(self.sigma, (int, float)) or not self.sigma > 0 \
                or self.sigma == float("inf"):
            raise ValueError(f"sigma must be a finite float > 0, got {self.sigma!r}")

    def select(self, model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
        named = dict(model.named_parameters())
        if self.parameters is not None:
            unknown = [n for n in self.parameters if n not in named]
            if unknown:
                raise ValueError(f"unknown parameter names {unknown}; the model has e.g. "
                                 f"{list(named)[:5]}")
            if not self.parameters:
                raise ValueError("parameters=() selects nothing to perturb")
            return [(n, named[n]) for n in self.parameters]
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        head_weight = head.weight if head is not None else None
        chosen, seen = [], set()
        for module_name, module in model.named_modules():
            for pname, p in module.named_parameters(recurse=False):
                name = f"{module_name}.{pname}" if module_name else pname
                if id(p) in seen:
                    continue  # tied weights: perturb once
                is_head = p is head_weight
                if is_head:
                    keep = self.include_lm_head
                elif isinstance(module, torch.nn.Linear):
                    keep = pname == "weight"
                elif isinstance(module, torch.nn.Embedding):
                    keep = self.include_embeddings
                else:
                    keep = self.include_norms and p.dim() == 1
                if keep:
                    seen.add(id(p))
                    chosen.append((name, p))
        if not chosen:
            raise ValueError("the perturbation spec selects no parameter of this model")
        return chosen


class Perturber:
    """Runs members on one model; see the module docstring for the three modes."""

    def __init__(self, model: torch.nn.Module, spec: PerturbationSpec,
                 backup_device: str | torch.device | None = None):
        self.model, self.spec = model, spec
        self.params = spec.select(model)
        self.numel = sum(p.numel() for _, p in self.params)
        modules = dict(model.named_modules())
        self.linears: dict[str, torch.nn.Linear] = {}
        for name, p in self.params:
            owner = modules.get(name.rpartition(".")[0])
            if isinstance(owner, torch.nn.Linear) and name.endswith(".weight") \
                    and owner.weight is p:
                self.linears[name] = owner
        self.fusable = len(self.linears) == len(self.params)
        self._backup_device = backup_device
        self._backup: dict[str, torch.Tensor] | None = None
        self._mode_logged: set[str] = set()

    # -- choosing ---------------------------------------------------------------------------------

    def on_cuda(self) -> bool:
        return self.params[0][1].is_cuda

    def choose_mode(self, member_count: int, forward_calls: int, single_seed: bool = True) -> str:
        """inplace generates each member's noise once; fused/population regenerate it in every
        forward call but touch no weights and batch members. Rule (documented, measured):
        population when several single-seed members run together, on the CPU only for a small
        model (per-step overhead dominates there; benchmarks/bench_modes.py), on CUDA at any size
        (0.44B Llama on an H200, 64 prompts x 64 new tokens: population of 16 members gave 3.35-3.5
        members/s against 0.78-0.98 in place; benchmarks/results/gpu-NVIDIA-H200.md); fused for a
        single forward pass; inplace otherwise."""
        if not (self.fusable and single_seed):
            mode = "inplace"
        elif member_count > 1 and (self.on_cuda() or self.numel * member_count <= 8_000_000):
            mode = "population"
        elif forward_calls <= 1:
            mode = "fused"
        else:
            mode = "inplace"
        if mode not in self._mode_logged:
            self._mode_logged.add(mode)
            log.info("perturbation mode: %s (%d members together, %d forward calls each, %d "
                     "perturbed weights%s)", mode, member_count, forward_calls, self.numel,
                     "" if self.fusable else ", not all nn.Linear weights")
        return mode

    # -- in place ---------------------------------------------------------------------------------

    def _take_backup(self) -> None:
        if self._backup is None:
            self._backup = {name: p.detach().to(self._backup_device or p.device, copy=True)
                            for name, p in self.params}

    @torch.no_grad()
    def add_(self, member: Member, scale: float = 1.0) -> None:
        """W <- round(W + scale * delta) for every perturbed parameter (one rounding). Permanent:
        the consolidated model is built this way."""
        for name, p in self.params:
            keys = [parameter_key(s, name) for s in member.seeds]
            coeffs = [scale * c for c in member.coeffs]
            if len(keys) == 1:
                ck.add_noise_(p.data, keys[0], coeffs[0])
            else:
                delta = ck.weighted_noise_sum(p.shape, keys, coeffs, device=p.device)
                p.data.copy_((p.data.float() + delta).to(p.dtype))

    @torch.no_grad()
    def restore_(self) -> None:
        if self._backup is None:
            return
        for name, p in self.params:
            p.data.copy_(self._backup[name])

    def rebase(self) -> None:
        """Forget the backup: the current weights become the state restore_() returns to."""
        self._backup = None

    @contextlib.contextmanager
    def inplace(self, member: Member) -> Iterator[None]:
        self._take_backup()
        try:
            self.add_(member)
            yield
        finally:
            self.restore_()

    # -- fused ------------------------------------------------------------------------------------

    def _require_fusable(self, members: Sequence[Member]) -> None:
        if not self.fusable:
            raise ValueError("fused modes need every perturbed parameter to be an nn.Linear "
                             "weight; this spec also perturbs "
                             f"{[n for n, _ in self.params if n not in self.linears][:5]}")
        if not all(m.is_single for m in members):
            raise ValueError("fused modes run single-seed members; use mode='inplace' for "
                             "combinations of seeds")

    @contextlib.contextmanager
    def _patched(self, make_forward) -> Iterator[None]:
        patched = []
        try:
            for name, module in self.linears.items():
                module.forward = types.MethodType(make_forward(name), module)
                patched.append(module)
            yield
        finally:
            for module in patched:
                del module.forward

    def fused(self, member: Member):
        self._require_fusable([member])
        seed, sigma = member.seeds[0], member.coeffs[0]

        def make_forward(name):
            key = parameter_key(seed, name)

            def forward(module, x):
                return ck.perturbed_linear(x, module.weight, module.bias, key, sigma)
            return forward
        return self._patched(make_forward)

    def population(self, members: Sequence[Member]):
        """Inside: a batch of P * B rows is P members' copies of B rows, member-major."""
        self._require_fusable(members)
        seeds = [m.seeds[0] for m in members]
        sigmas = [m.coeffs[0] for m in members]
        count = len(members)

        def make_forward(name):
            keys = [parameter_key(s, name) for s in seeds]

            def forward(module, x):
                if x.shape[0] % count:
                    raise ValueError(f"population of {count} members needs a batch that is a "
                                     f"multiple of {count}, got {x.shape[0]}")
                grouped = x.reshape(count, x.shape[0] // count, *x.shape[1:])
                y = ck.population_linear(grouped, module.weight, module.bias, keys, sigmas)
                return y.reshape(x.shape[0], *y.shape[2:])
            return forward
        return self._patched(make_forward)

    def run(self, member: Member, mode: str):
        if mode == "inplace":
            return self.inplace(member)
        if mode == "fused":
            return self.fused(member)
        raise ValueError(f"mode must be 'inplace' or 'fused' for one member, got {mode!r}")


def state_fingerprint(model: torch.nn.Module) -> str:
    """A hash of every parameter's bytes: equal iff the model is bit for bit unchanged."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in model.state_dict().items():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
