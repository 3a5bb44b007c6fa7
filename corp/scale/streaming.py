"""Consolidation in little memory: safetensors in, LoRA adapter and merged shards out, one tensor
at a time.

A consolidated update is seeds and coefficients; its noise can be regenerated for any parameter
from the parameter's name and shape. So building the update's low-rank factors needs no weights
at all (shapes come from the safetensors headers), and merging needs one tensor in memory at a
time:

- reading: tensors are read through a memory map of their shard a chunk at a time, and each
  chunk's pages are released (MADV_DONTNEED) once used, so resident memory never holds the file;
  a tensor the update does not change goes from the map to the output file without a copy;
- factors: the streaming randomized SVD (`corp_kernels.randomized_svd_noise`) regenerates noise
  tile by tile; a layer's dense update is materialized only when it fits a quarter of
  `max_memory_bytes` (faster: one noise pass instead of two or more);
- merging: W + B @ A (or the exact noise sum) is computed a block of rows at a time, so even
  the largest layer costs a few MiB;
- writing: the output header is computed from the input's shapes and dtypes first, then each
  tensor's bytes are appended, so no shard is ever held whole.

Layers can be split across `torch.distributed` ranks (`rank`, `world`): each rank factors its own
share and rank 0 gathers the (small) factors and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

import corp_kernels as ck

from ..method.export import EXPORT_ARTIFACTS, LayerFactors, layer_factors, write_adapter
from ..method.perturb import Member, parameter_key
from ..outputs import MANIFEST, RECORD, Commit, kill_point

log = logging.getLogger("corp")

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
          "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32, "I16": torch.int16,
          "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}
_PAGE = mmap.PAGESIZE
_CHUNK = 8 << 20  # bytes of the map resident at a time: released after each chunk
_MERGE_BLOCK = 8 << 20  # float32 bytes of a block of rows merged at a time


def _trim_heap() -> None:
    """Give freed heap memory back to the OS. glibc keeps freed blocks of up to 32 MiB in its
    arenas (its mmap threshold adapts upwards), so without this a loop over layers of a few tens
    of MiB each holds on to hundreds of MiB it no longer uses."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


@dataclass
class TensorEntry:
    name: str
    file: str
    dtype: str  # safetensors name, e.g. "BF16"
    shape: tuple[int, ...]
    begin: int  # absolute byte offsets in `file`
    end: int


def read_header(path: str) -> tuple[list[TensorEntry], dict]:
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    start = 8 + length
    meta = header.pop("__metadata__", {}) or {}
    entries = [TensorEntry(name, path, h["dtype"], tuple(h["shape"]),
                           start + h["data_offsets"][0], start + h["data_offsets"][1])
               for name, h in header.items()]
    entries.sort(key=lambda e: e.begin)
    return entries, meta


def model_files(model_dir: str) -> list[str]:
    """The safetensors shards of a Hugging Face model folder, in index order."""
    index = os.path.join(model_dir, "model.safetensors.index.json")
    if os.path.exists(index):
        with open(index) as f:
            files = list(dict.fromkeys(json.load(f)["weight_map"].values()))
        return [os.path.join(model_dir, name) for name in files]
    single = os.path.join(model_dir, "model.safetensors")
    if os.path.exists(single):
        return [single]
    raise ValueError(f"{model_dir} has no model.safetensors or model.safetensors.index.json "
                     f"(streaming consolidation reads safetensors checkpoints only)")


class ShardReader:
    """Reads tensors of one shard through a memory map, releasing the pages after each chunk."""

    def __init__(self, path: str):
        self._file = open(path, "rb")
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)

    def _release(self, begin: int, end: int) -> None:
        lo = begin - begin % _PAGE
        self._map.madvise(mmap.MADV_DONTNEED, lo, end - lo)

    def read(self, entry: TensorEntry, rows: tuple[int, int] | None = None) -> torch.Tensor:
        """A copy of the tensor, or of its rows [r0, r1) along the first dimension."""
        begin, end, shape = entry.begin, entry.end, entry.shape
        if rows is not None:
            row_bytes = (end - begin) // shape[0]
            begin, end = begin + rows[0] * row_bytes, begin + rows[1] * row_bytes
            shape = (rows[1] - rows[0], *shape[1:])
        out = torch.empty(end - begin, dtype=torch.uint8)
        dst = out.numpy()
        for start in range(begin, end, _CHUNK):  # resident: the copy plus one chunk of the map
            n = min(_CHUNK, end - start)
            dst[start - begin:start - begin + n] = np.frombuffer(self._map, np.uint8, n, start)
            self._release(start, start + n)
        return out.view(DTYPES[entry.dtype]).reshape(shape)

    def chunks(self, entry: TensorEntry):
        """The tensor's stored bytes, as views of the map a chunk at a time (nothing copied)."""
        for start in range(entry.begin, entry.end, _CHUNK):
            end = min(start + _CHUNK, entry.end)
            with memoryview(self._map)[start:end] as view:
                yield view
            self._release(start, end)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:  # a chunk view still alive after an error: the GC unmaps it
            pass
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_streaming(path: str, entries: list[TensorEntry], produce, metadata: dict | None = None
                    ) -> str:
    """Write a safetensors file whose tensors have `entries`' names, dtypes and shapes, calling
    produce(entry) for one tensor at a time: it returns the tensor, or its stored bytes as an
    iterable of bytes-like pieces (so a tensor can be written a block at a time). Written to a
    temporary name and renamed. Returns the file's SHA-256, computed as it is written (for the
    folder's manifest, so that a large checkpoint is not read again)."""
    header, offset = {}, 0
    for e in entries:
        size = e.end - e.begin
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape),
                          "data_offsets": [offset, offset + size]}
        offset += size
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    tmp = path + ".partial"
    digest = hashlib.sha256()
    with open(tmp, "wb") as f:
        for piece in (struct.pack("<Q", len(blob)), blob):
            f.write(piece)
            digest.update(piece)
        for e in entries:
            produced = produce(e)
            if isinstance(produced, torch.Tensor):
                if tuple(produced.shape) != e.shape or DTYPE_NAMES[produced.dtype] != e.dtype:
                    raise ValueError(f"{e.name}: produced {tuple(produced.shape)} "
                                     f"{produced.dtype}, expected {e.shape} {e.dtype}")
                produced = [_tensor_bytes(produced)]
            written = 0
            for piece in produced:
                written += f.write(piece)
                digest.update(piece)
            if written != e.end - e.begin:
                raise ValueError(f"{e.name}: produced {written} bytes, expected {e.end - e.begin}")
    os.replace(tmp, path)
    return digest.hexdigest()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.contiguous().reshape(-1).view(torch.uint8).numpy())


def perturbed_entries(model_dir: str, names) -> list[TensorEntry]:
    """The 2-D tensors among `names` (the population's perturbed parameters), in file order."""
    wanted = set(names)
    out = []
    for path in model_files(model_dir):
        out += [e for e in read_header(path)[0] if e.name in wanted and len(e.shape) == 2]
    missing = wanted - {e.name for e in out}
    missing_2d = sorted(n for n in missing if n.endswith(".weight"))
    if missing_2d and not out:
        raise ValueError(f"none of the population's parameters are in {model_dir} "
                         f"(e.g. {missing_2d[:3]}): wrong model?")
    return out


def update_factors(model_dir: str, update: Member, names, max_rank: int = 16,
                   energy_fraction: float | None = None, max_memory_bytes: int | None = None,
                   power_iters: int = 0, rank: int = 0, world: int = 1,
                   progress: bool = True) -> list[LayerFactors]:
    """Low-rank factors of every perturbed 2-D parameter (this rank's share when world > 1).
    `energy_fraction=None` keeps exactly `max_rank` (skipping the exact-energy pass)."""
    dense_budget = (max_memory_bytes // 4) if max_memory_bytes else 256 << 20
    entries = perturbed_entries(model_dir, names)[rank::world]
    out = []
    for e in tqdm(entries, desc=f"factors (rank {rank})", unit="layer", disable=not progress):
        out.append(layer_factors(e.name, e.shape, update, max_rank, energy_fraction, power_iters,
                                 dense_budget))
        _trim_heap()
    return out


def gather_factors(factors: list[LayerFactors], world: int) -> list[LayerFactors]:
    if world == 1:
        return factors
    import torch.distributed as dist
    parts = [None] * world
    dist.all_gather_object(parts, factors)
    return [f for part in parts for f in part]


def _merged_rows(reader: ShardReader, e: TensorEntry, update: Member, factors: LayerFactors,
                 exact: bool):
    """The bytes of W + B @ A (or W + sum_j c_j eps_j), a block of rows at a time: resident
    memory is a few MiB whatever the layer's size. A block of rows [r0, r1) is the tensor's noise
    at base position r0 * cols, so the exact sum is the same bits as for the whole tensor."""
    rows, cols = e.shape
    block = max(1, _MERGE_BLOCK // (4 * cols))
    keys = [parameter_key(s, e.name) for s in update.seeds] if exact else None
    b, a = factors.lora_b.float(), factors.lora_a.float()
    for r0 in range(0, rows, block):
        r1 = min(rows, r0 + block)
        w = reader.read(e, (r0, r1))
        acc = w.float()
        if exact:  # the same arithmetic as Perturber.add_: one rounding
            acc += ck.weighted_noise_sum((r1 - r0, cols), keys, list(update.coeffs),
                                         offset=r0 * cols)
        else:
            acc.addmm_(b[r0:r1], a)
        yield _tensor_bytes(acc.to(w.dtype))


def write_merged(model_dir: str, out_dir: str, update: Member, factors: list[LayerFactors],
                 exact: bool = False, progress: bool = True,
                 hashes: dict[str, str] | None = None) -> str:
    """A merged checkpoint, shard by shard: W + B @ A (or, with `exact`, W + sum_j c_j eps_j),
    rounded once to the stored dtype. Other files of the model folder are copied (not its corp
    manifest or record). `out_dir` must be new or empty: files of an earlier checkpoint left
    beside the new shards would be loaded with them (consolidate_streaming stages a fresh folder
    and replaces the old one as a whole). `hashes` receives each shard's SHA-256."""
    if os.path.isdir(out_dir) and os.listdir(out_dir):
        raise ValueError(f"{out_dir} is not empty: write_merged writes a fresh folder (an earlier "
                         f"checkpoint's files would be loaded with the new shards)")
    os.makedirs(out_dir, exist_ok=True)
    by_name = {f.name: f for f in factors}
    files = model_files(model_dir)
    for name in os.listdir(model_dir):
        src = os.path.join(model_dir, name)
        if (os.path.isfile(src) and not name.endswith(".safetensors")
                and name not in (MANIFEST, RECORD)):
            shutil.copy2(src, os.path.join(out_dir, name))
    bar = tqdm(total=sum(os.path.getsize(p) for p in files), unit="B", unit_scale=True,
               desc="merged checkpoint", disable=not progress)

    for shard, path in enumerate(files, 1):
        entries, meta = read_header(path)
        with ShardReader(path) as reader:
            def produce(e: TensorEntry):
                if e.name in by_name:
                    yield from _merged_rows(reader, e, update, by_name[e.name], exact)
                    _trim_heap()
                else:  # unchanged: the stored bytes go straight from the map to the file
                    yield from reader.chunks(e)
                bar.update(e.end - e.begin)
            digest = write_streaming(os.path.join(out_dir, os.path.basename(path)), entries,
                                     produce, meta)
        if hashes is not None:
            hashes[os.path.basename(path)] = digest
        kill_point(f"merged:shard-{shard}")
    bar.close()
    return out_dir


def consolidate_streaming(model_dir: str, update: Member, names, out_dir: str,
                          max_rank: int = 16, energy_fraction: float | None = None,
                          max_memory_bytes: int | None = None, adapter: bool = True,
                          merged: str | None = "lowrank", power_iters: int = 0,
                          progress: bool = True, commit: Commit | None = None) -> dict:
    """Adapter and/or merged checkpoint for `update` on the safetensors model in `model_dir`.
    Under torchrun, layers are factored across ranks and rank 0 writes.

    `adapter/` and `merged-*/` in `out_dir` are replaced as a whole (corp.outputs): they are
    staged beside their targets and committed together, and the ones this call does not write
    are retired, so what loads is always one call's output. Pass `commit` (rank 0) to stage them
    into a larger commit that the caller completes; without it this call commits."""
    import torch.distributed as dist
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    factors = update_factors(model_dir, update, names, max_rank, energy_fraction,
                             max_memory_bytes, power_iters, rank, world, progress)
    factors = gather_factors(factors, world)
    out = {"layers": len(factors), "ranks": sorted({int(f.lora_a.shape[0]) for f in factors})}
    if rank == 0:
        own = commit is None
        if own:
            commit = Commit(out_dir, EXPORT_ARTIFACTS, "consolidate --streaming")
        try:
            if adapter:
                write_adapter(commit.folder("adapter"), factors, model_dir)
                out["adapter"] = os.path.join(out_dir, "adapter")
                kill_point("export:adapter")
            if merged:
                name, hashes = f"merged-{merged}", {}
                write_merged(model_dir, commit.folder(name), update, factors,
                             exact=merged == "exact", progress=progress, hashes=hashes)
                commit.add_hashes(name, hashes)
                out["merged"] = os.path.join(out_dir, name)
                kill_point(f"export:{name}")
            if own:
                commit.commit()
        except BaseException:
            if own:
                commit.abort()
            raise
    if distributed:
        dist.barrier()
    return out


def parse_bytes(text: str | int | None) -> int | None:
    """'2GiB', '512MB', '1.5G' or a number of bytes."""
    if text is None or isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "K": 1 << 10, "KB": 10 ** 3, "KIB": 1 << 10, "M": 1 << 20,
             "MB": 10 ** 6, "MIB": 1 << 20, "G": 1 << 30, "GB": 10 ** 9, "GIB": 1 << 30}
    import re
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)\s*([KMG]?I?B?)", str(text).strip().upper())
    if not m or m.group(2) not in units:
        raise ValueError(f"cannot read a memory size from {text!r} (e.g. 2GiB, 512MB)")
    return int(float(m.group(1)) * units[m.group(2)])


def checkpoint_fingerprint(model_dir: str, names) -> dict:
    """The fingerprint (`corp.method.population.fingerprint`) of the parameters `names` of a
    safetensors checkpoint, from its headers alone: the same as the in-memory model's when it is
    loaded in the stored dtypes. Names not in the checkpoint are left out."""
    from ..method.population import fingerprint
    entries = {}
    for path in model_files(model_dir):
        entries.update({e.name: e for e in read_header(path)[0]})
    return fingerprint((n, entries[n].shape, DTYPES[entries[n].dtype]) for n in names
                       if n in entries)


def read_population(log_path: str, model_dir: str | None = None, population: int | None = None):
    """(header, records) of a population log, without a model (read-only; a truncated last line
    is left out, any other damage is an error naming the line).

    With `model_dir`, the log's model fingerprint must match the checkpoint's names and shapes (a
    dtype that differs only warns: the noise depends on names and shapes, and a search often runs
    a bf16 checkpoint in float32). With `population`, the records are exactly the first
    `population` members of the log's seed stream, in stream order: fewer is an error saying how
    many there are, records outside them (another search's, or a larger one's) are left out with
    a warning."""
    from ..method.population import fingerprint_differences, member_seeds, read_log
    if not os.path.exists(log_path):
        raise ValueError(f"there is no population log at {log_path}: run `corp search` first")
    header, records, _ = read_log(log_path)
    if header is None:
        raise ValueError(f"{log_path} is empty: run `corp search` first")
    if model_dir is not None:
        logged = header.get("fingerprint")
        if logged is None:
            log.warning("%s has no model fingerprint (written before corp recorded one): the "
                        "shapes of %s cannot be checked against the search's model", log_path,
                        model_dir)
        else:
            actual = checkpoint_fingerprint(model_dir, [p[0] for p in logged["parameters"]])
            wrong = fingerprint_differences(logged, actual, dtypes=False)
            if wrong:
                raise ValueError(f"{log_path} was searched on another model than {model_dir} "
                                 f"({'; '.join(wrong)}): consolidate with the model the search "
                                 f"ran on (its header names {header.get('model')!r})")
            dtypes = fingerprint_differences(logged, actual)
            if dtypes:
                log.warning("%s: %s (the update is the same; the rewards were measured in the "
                            "logged dtypes)", log_path, dtypes[0])
    if population is None:
        return header, records
    seeds = member_seeds(population, int(header.get("population_seed", 0)))
    by_seed = {r.seed: r for r in records}
    have = sum(s in by_seed for s in seeds)
    if have < population:
        prefix = next((i for i, s in enumerate(seeds) if s not in by_seed), population)
        hint = (f", or consolidate the first {prefix} with --population {prefix}" if prefix
                else "")
        raise ValueError(f"{log_path} has {have} of the {population} members asked for "
                         f"(--population {population}): finish the search with `corp search` "
                         f"and the same options{hint}")
    others = len(by_seed) - have
    if others:
        log.warning("%s: %d of its %d records are not among the %d members asked for (the "
                    "first %d seeds of population seed %s) and are left out", log_path, others,
                    len(by_seed), population, population, header.get("population_seed", 0))
    return header, [by_seed[s] for s in seeds]


def stage1_update(model_dir: str, records, names, q: float = 0.5, beta: float = 1.0,
                  alpha: float = 1.0) -> Member:
    """CoRP's two-pass merge at a fixed (q, beta, alpha), from seeds and rewards alone: the exact
    Gram streams over the parameters' shapes, read from the safetensors headers. No gate (that
    needs the model evaluated): gate it with `corp eval` on the merged checkpoint."""
    from ..method.consolidate import as_member, named_shapes_gram, stage1_coefficients
    from ..method.population import check_rewards
    check_rewards(records)
    shapes = {}
    for path in model_files(model_dir):
        shapes.update({e.name: e.shape for e in read_header(path)[0]})
    missing = [n for n in names if n not in shapes]
    if missing:
        raise ValueError(f"{len(missing)} perturbed parameters are not in {model_dir}, e.g. "
                         f"{missing[:3]}")
    seeds = [r.seed for r in records]
    sig = np.array([r.sigma for r in records])
    gram = named_shapes_gram([(n, shapes[n]) for n in names], seeds) * np.outer(sig, sig)
    rewards = np.array([r.reward for r in records])
    _, _, coeffs = stage1_coefficients(rewards, gram, sig, q, beta)
    return as_member(seeds, coeffs, alpha)
