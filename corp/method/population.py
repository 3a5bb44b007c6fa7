"""Population search (RandOpt's Stage 0): evaluate N seeded members on the train split.

Each evaluated member is appended to a JSONL log as soon as it is scored (flushed and fsynced), so
an interrupted search loses at most the members in flight. Rerunning the same command reads the
log, skips what is there and evaluates only the rest.

The log is a small database with one writer:

- a header line records the search (model, task, train prompts, parameters, sigmas, population
  seed) and the model's fingerprint: the (name, shape, dtype) of every perturbed parameter and a
  short hash of them. A log of another search or another model is refused, naming what differs.
  Other dtypes only warn (the noise depends on names and shapes: a search in bfloat16 is
  consolidated in float32), and so does another model path when both headers have fingerprints
  (a moved or linked model folder); a log from before fingerprints is accepted with a warning
  (its other fields, the model path included, still match);
- the writer holds an exclusive `fcntl.flock` on `<log>.lock` for its lifetime (the file holds its
  pid and host), so a second search on the same folder stops at once instead of interleaving;
  the header is written to a temporary file and renamed into place under that lock;
- every line is checked when read: a corrupt line, a record of another search, a non-finite
  reward, or one seed logged twice with different results is an error naming the file and line.
  The same record twice (a resumed run) is tolerated. A truncated last line (a kill mid-write) is
  dropped and that member is evaluated again; a last line that is a complete, valid line without
  its newline (a user's editor dropped it) is kept, and the writer appends the newline;
- rewards are checked where they are produced: a NaN or infinite reward stops the search with
  the member, the example and its prompt named, before anything is logged.

Member seeds are the first N values of a fixed stream derived from `population_seed`, and each
member's sigma is drawn from `sigmas` by its seed, so shards and reruns agree on every member.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..evaluate import Scores
from ..outputs import exclusive_lock
from .perturb import Member, Perturber

log = logging.getLogger("corp")


def member_seeds(n: int, population_seed: int = 0) -> list[int]:
    """N distinct 63-bit member seeds, the same for every process and rerun."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"population size must be an int >= 1, got {n!r}")
    rng = random.Random(f"corp-population-{population_seed}")
    seeds, seen = [], set()
    while len(seeds) < n:
        s = rng.getrandbits(63)
        if s not in seen:
            seen.add(s)
            seeds.append(s)
    return seeds


def member_sigma(seed: int, sigmas: Sequence[float]) -> float:
    """sigma of a member: drawn from `sigmas` by its seed (RandOpt draws one per member)."""
    return float(sigmas[random.Random(seed).randrange(len(sigmas))])


@dataclass
class Record:
    seed: int
    sigma: float
    reward: float
    accuracy: float
    rewards: list[float]  # per train example
    correct: list[bool]

    @classmethod
    def from_scores(cls, seed: int, sigma: float, scores: Scores) -> "Record":
        return cls(seed, sigma, scores.reward, scores.accuracy,
                   [float(r) for r in scores.rewards], [bool(c) for c in scores.correct])

    @property
    def member(self) -> Member:
        return Member.single(self.seed, self.sigma)


class PopulationLogError(ValueError):
    """A population log that cannot be used as it is: the message names the file (and line) and
    what to do."""


# -- the model's fingerprint -----------------------------------------------------------------------

def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def fingerprint(parameters: Iterable[tuple[str, Sequence[int], torch.dtype | str]]) -> dict:
    """{"sha256": 16 hex digits, "parameters": [[name, shape, dtype], ...]} of (name, shape,
    dtype) triples, in the given order. The same for the model in memory (`model_fingerprint`)
    and for a safetensors checkpoint read from its headers alone."""
    entries = [[str(name), [int(d) for d in shape],
                dtype if isinstance(dtype, str) else dtype_name(dtype)]
               for name, shape, dtype in parameters]
    digest = hashlib.sha256(json.dumps(entries, separators=(",", ":")).encode()).hexdigest()
    return {"sha256": digest[:16], "parameters": entries}


def model_fingerprint(named_parameters: Iterable[tuple[str, torch.Tensor]]) -> dict:
    """Fingerprint of the perturbed parameters, e.g. `Perturber.params`."""
    return fingerprint((name, tuple(p.shape), p.dtype) for name, p in named_parameters)


def fingerprint_differences(logged: dict, actual: dict, dtypes: bool = True,
                            limit: int = 3) -> list[str]:
    """What differs between two fingerprints, in words (empty when they agree). `dtypes=False`
    compares names and shapes only."""
    if dtypes and logged.get("sha256") == actual.get("sha256"):
        return []
    old = {name: (tuple(shape), dtype) for name, shape, dtype in logged.get("parameters", [])}
    new = {name: (tuple(shape), dtype) for name, shape, dtype in actual.get("parameters", [])}
    out = []
    missing = [n for n in old if n not in new]
    extra = [n for n in new if n not in old]
    if missing:
        out.append(f"{len(missing)} logged parameters are not in the model, e.g. {missing[:limit]}")
    if extra:
        out.append(f"{len(extra)} of the model's parameters are not in the log, e.g. "
                   f"{extra[:limit]}")
    shapes = [f"{n} {list(old[n][0])} in the log, {list(new[n][0])} in the model"
              for n in old if n in new and old[n][0] != new[n][0]]
    if shapes:
        out.append(f"{len(shapes)} parameters have other shapes: {'; '.join(shapes[:limit])}")
    if dtypes:
        kinds = [f"{n} {old[n][1]} in the log, {new[n][1]} in the model"
                 for n in old if n in new and old[n][1] != new[n][1]]
        if kinds:
            out.append(f"{len(kinds)} parameters have other dtypes: {'; '.join(kinds[:limit])}")
    if not out and [n for n in old] != [n for n in new]:
        out.append("the parameters are listed in another order")
    return out


def _is_path(model) -> bool:
    return isinstance(model, str) and os.path.isabs(model)


def check_header(path: str, found: dict, expected: dict) -> None:
    """Refuse a log whose header is not `expected`, naming what differs; warn where only the
    dtypes, or (with fingerprints on both sides) the model folder's path, differ; accept a log
    written before fingerprints with a warning (see the module docstring)."""
    found_fp, expected_fp = found.get("fingerprint"), expected.get("fingerprint")
    diffs, notes = [], []
    for key in sorted((set(found) | set(expected)) - {"fingerprint"}):
        a, b = found.get(key, "(absent)"), expected.get(key, "(absent)")
        if a == b:
            continue
        if key == "model" and found_fp and expected_fp and _is_path(a) and _is_path(b):
            # the fingerprint checks the model's parameters; a path moves
            if os.path.realpath(a) != os.path.realpath(b):
                notes.append(f"model: {a!r} in the log, {b!r} now (the same parameter names and "
                             f"shapes: the logged rewards are those of the model at {a!r})")
            continue
        if isinstance(a, list) and isinstance(b, list) and len(a) + len(b) > 8:
            at = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
            diffs.append(f"{key}: {len(a)} entries in the log, {len(b)} now, the first "
                         f"difference at index {at}")
        else:
            diffs.append(f"{key}: {a!r} in the log, {b!r} now")
    if found_fp is not None and found_fp != expected_fp:
        if not expected_fp:
            diffs.append("the log has a model fingerprint, this caller none")
        else:
            diffs += fingerprint_differences(found_fp, expected_fp, dtypes=False)
            if not diffs:
                notes += fingerprint_differences(found_fp, expected_fp)
    if diffs:
        raise PopulationLogError(
            f"{path} was written by a different search ({'; '.join(diffs)}); use another "
            f"--output-dir, or delete the log to start this search from scratch")
    for note in notes:
        log.warning("%s: %s", path, note)
    if found_fp is None and expected_fp is not None:
        log.warning("%s has no model fingerprint (written before corp recorded one): its "
                    "model, task and parameter names match, but the parameters' shapes and "
                    "dtypes cannot be checked", path)


# -- reading ---------------------------------------------------------------------------------------

_FIELDS = tuple(Record.__dataclass_fields__)


def _damaged(path: str, lineno: int, what: str) -> PopulationLogError:
    return PopulationLogError(
        f"{path}:{lineno}: {what}. Delete that line (its member is evaluated again by the next "
        f"`corp search`), or use another --output-dir")


def _record(path: str, lineno: int, obj, header: dict) -> Record:
    """A member record from a parsed line, checked against itself and the header."""
    if not isinstance(obj, dict) or set(obj) != set(_FIELDS):
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise _damaged(path, lineno, f"not a member record (fields {keys}, expected "
                                     f"{sorted(_FIELDS)})")
    rec = Record(**obj)
    if not isinstance(rec.seed, int) or isinstance(rec.seed, bool):
        raise _damaged(path, lineno, f"seed {rec.seed!r} is not an integer")
    try:
        values = [float(rec.reward), *map(float, rec.rewards)]
    except (TypeError, ValueError):
        raise _damaged(path, lineno, f"member {rec.seed} has a reward that is not a number")
    if not all(map(math.isfinite, values)):
        raise PopulationLogError(
            f"{path}:{lineno}: member {rec.seed} has a NaN or infinite reward (written before "
            f"corp checked rewards); fix the task's reward, delete that line and run "
            f"`corp search` again to evaluate the member again")
    if "sigmas" in header and rec.sigma != member_sigma(rec.seed, header["sigmas"]):
        raise _damaged(path, lineno, f"member {rec.seed} has sigma {rec.sigma}, but this search "
                                     f"draws {member_sigma(rec.seed, header['sigmas'])} for it: "
                                     f"the line comes from another search")
    if "train" in header and len(rec.rewards) != len(header["train"]):
        raise _damaged(path, lineno, f"member {rec.seed} has {len(rec.rewards)} rewards for "
                                     f"{len(header['train'])} train examples: the line comes "
                                     f"from another search")
    return rec


def read_log_lines(path: str) -> tuple[dict | None, dict[int, tuple[int, Record]], bool]:
    """(header, {seed: (line number, record)}, partial) of a population log, read-only and
    checked line by line (see the module docstring). The part after the last newline is kept if
    it is a complete, valid line (its newline lost to an editor), else it is an unfinished write
    (partial=True) and is left out; a log with no complete line has header None."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    header, records = None, {}
    for lineno, raw in enumerate(lines[:-1], 1):
        header = _take_line(path, lineno, raw, header, records)
    partial = False
    if lines[-1].strip():
        try:  # a failed check leaves `records` as it was
            header = _take_line(path, len(lines), lines[-1], header, records)
        except PopulationLogError:
            partial = True
    return header, records, partial


def _take_line(path: str, lineno: int, raw: bytes, header: dict | None,
               records: dict[int, tuple[int, Record]]) -> dict | None:
    """Check line `lineno` of a population log and add its record to `records`; returns the
    header (this line's, if it is the first)."""
    if not raw.strip():
        return header
    try:
        obj = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = (f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError)
                else "not UTF-8 text")
        if header is None:
            raise PopulationLogError(f"{path}:{lineno}: the header line is damaged ({what}); "
                                     f"delete the log or use another --output-dir")
        raise _damaged(path, lineno, f"not a JSON line ({what})")
    if header is None:
        if not isinstance(obj, dict) or not isinstance(obj.get("header"), dict):
            raise PopulationLogError(f"{path}:{lineno}: the first line is not a population "
                                     f"log header; is this a population log?")
        return obj["header"]
    rec = _record(path, lineno, obj, header)
    if rec.seed in records:
        first, seen = records[rec.seed]
        if seen != rec:
            raise PopulationLogError(
                f"{path}: member {rec.seed} is logged twice with different results (lines "
                f"{first} and {lineno}); one of them comes from another run. Delete the "
                f"wrong line (or both, to evaluate the member again)")
        return header  # the same record again (a resumed run): tolerated
    records[rec.seed] = (lineno, rec)
    return header


def read_log(path: str) -> tuple[dict | None, list[Record], bool]:
    """(header, records, partial) of a population log, read-only and checked (see
    `read_log_lines`); each seed once, in log order."""
    header, records, partial = read_log_lines(path)
    return header, [rec for _, rec in records.values()], partial


def read_records(path: str, header: dict) -> dict[int, Record]:
    """{seed: record} of the log at `path` if it is one of the search `header` describes (see
    `check_header`); {} when there is no log yet. Read-only: no lock, nothing written."""
    if not os.path.exists(path):
        return {}
    found, records, _ = read_log(path)
    if found is None:
        return {}
    check_header(path, found, header)
    return {rec.seed: rec for rec in records}


# -- writing ---------------------------------------------------------------------------------------

def _lock(path: str) -> int:
    """The log's writer lock, `<path>.lock` (corp.outputs.exclusive_lock)."""
    lock_path = path + ".lock"
    return exclusive_lock(lock_path, lambda holder: PopulationLogError(
        f"{path} is being written by another process (pid {holder}, which holds {lock_path}): "
        f"two searches on one log would evaluate members twice and interleave their lines. "
        f"Wait for it to finish (or stop it), or give this run another --output-dir"))


class PopulationLog:
    """Append-only JSONL: a header line {"header": {...}}, then one line per member. The one
    writer of its file: holds the log's lock from construction to `close()` (or the end of a
    `with` block). `defer_header`: a new log's header is written with its first record instead of
    at once (a distributed search holds the merged log's lock from its start, but writes the log
    only at its end)."""

    def __init__(self, path: str, header: dict, defer_header: bool = False):
        self.path, self.header = path, header
        self.records: dict[int, Record] = {}
        self._file = None
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        self._lock_fd: int | None = _lock(path)
        try:
            found = self._load() if os.path.exists(path) else None
            if found is None and not defer_header:
                self._create()
            if found is not None or not defer_header:
                self._file = open(path, "a")
        except BaseException:
            self.close()
            raise

    def _load(self) -> dict | None:
        header, records, partial = read_log(self.path)
        with open(self.path, "rb+") as f:  # under the lock: appends stay line-aligned
            text = f.read()
            if partial:
                log.warning("%s: dropping a truncated last line (interrupted write)", self.path)
                f.truncate(text.rfind(b"\n") + 1)
            elif text and not text.endswith(b"\n"):  # a complete last line lost its newline
                f.write(b"\n")
        if header is None:
            return None
        check_header(self.path, header, self.header)
        self.records = {rec.seed: rec for rec in records}
        return header

    def _create(self) -> None:
        """The header, written to a temporary file and renamed into place (under the lock)."""
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            f.write(json.dumps({"header": self.header}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def add(self, record: Record) -> None:
        """Log a member; the same record again is a no-op, another result for a logged seed
        an error."""
        if self._lock_fd is None:
            raise PopulationLogError(f"{self.path} is closed")
        known = self.records.get(record.seed)
        if known is not None:
            if known != record:
                raise PopulationLogError(f"{self.path}: member {record.seed} is already logged "
                                         f"with another result (reward {known.reward} against "
                                         f"{record.reward})")
            return
        if not all(map(math.isfinite, [record.reward, *record.rewards])):
            raise PopulationLogError(f"member {record.seed}: NaN or infinite reward, not logged "
                                     f"to {self.path}")
        if self._file is None:  # a deferred header
            self._create()
            self._file = open(self.path, "a")
        self.records[record.seed] = record
        self._file.write(json.dumps(record.__dict__) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def __enter__(self) -> "PopulationLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if getattr(self, "_lock_fd", None) is not None:
            self.close()


def member_record(member: Member, scores: Scores, evaluator, examples) -> Record:
    """The record of a scored member; a NaN or infinite reward is refused here, before it is
    logged, naming the task, the example and its prompt."""
    seed = member.seeds[0]
    rewards = np.asarray(scores.rewards, dtype=float)
    if len(rewards) != len(examples):
        raise ValueError(f"the evaluator returned {len(rewards)} rewards for {len(examples)} "
                         f"train examples (member {seed})")
    bad = np.flatnonzero(~np.isfinite(rewards))
    if len(bad):
        i = int(bad[0])
        task = getattr(getattr(evaluator, "task", None), "name", None) or type(evaluator).__name__
        prompt = getattr(examples[i], "prompt", examples[i])
        raise ValueError(f"task {task!r} gave reward {rewards[i]} to train example {i} "
                         f"(prompt {str(prompt)[:200]!r}) for member {seed} ({len(bad)} of "
                         f"{len(rewards)} examples non-finite): rewards must be finite numbers; "
                         f"fix the task's reward. Nothing was logged for this member")
    return Record.from_scores(seed, member.coeffs[0], scores)


def iter_member_scores(perturber: Perturber, evaluator, examples, members: Sequence[Member],
                       mode: str = "auto", population_batch: int = 16):
    """(member, Scores) for each single-seed member, in order, a group at a time: `population`
    mode runs up to `population_batch` members in one batched forward, the others one by one."""
    if mode == "auto":
        mode = perturber.choose_mode(min(population_batch, max(1, len(members))),
                                     getattr(evaluator, "forward_calls", 1))
    batch = population_batch if mode == "population" else 1
    for start in range(0, len(members), batch):
        group = list(members[start:start + batch])
        if mode == "population" and len(group) > 1:
            with perturber.population(group):
                all_scores = evaluator.population(perturber.model, examples, len(group))
        else:
            all_scores = []
            for m in group:
                with perturber.run(m, "fused" if mode == "population" else mode):
                    all_scores.append(evaluator(perturber.model, examples))
        yield from zip(group, all_scores)


def search(perturber: Perturber, evaluator, examples, seeds: Sequence[int],
           sigmas: Sequence[float], log_path: str, header: dict, mode: str = "auto",
           population_batch: int = 16, progress: bool = True) -> list[Record]:
    """Evaluate every seed not yet in the log; return all records in `seeds` order."""
    with PopulationLog(log_path, header) as pop_log:
        todo = [s for s in seeds if s not in pop_log.records]
        if len(todo) < len(seeds):
            log.info("resuming: %d of %d members already in %s", len(seeds) - len(todo),
                     len(seeds), log_path)
        bar = tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="members",
                   unit="member", disable=not progress)
        members = [Member.single(s, member_sigma(s, sigmas)) for s in todo]
        for m, scores in iter_member_scores(perturber, evaluator, examples, members, mode,
                                            population_batch):
            pop_log.add(member_record(m, scores, evaluator, examples))
            bar.update(1)
        bar.close()
        return [pop_log.records[s] for s in seeds]


def check_rewards(records: Sequence[Record]) -> None:
    """Clear errors for a population CoRP cannot use."""
    if not records:
        raise ValueError("the population is empty: run `corp search` first")
    bad = [r.seed for r in records if not np.isfinite(r.reward)
           or not np.all(np.isfinite(r.rewards))]
    if bad:
        raise ValueError(f"members {bad[:5]} have NaN or infinite rewards; fix the reward "
                         f"function (rewards must be finite)")
