"""Population search (RandOpt's Stage 0): evaluate N seeded members on the train split.

Each evaluated member is appended to a JSONL log as soon as it is scored (flushed and fsynced), so
an interrupted search loses at most the members in flight. Rerunning the same command reads the
log, skips what is there and evaluates only the rest; a log written for a different model, task or
spec is refused instead of being mixed in. A truncated last line (a kill mid-write) is dropped and
that member is evaluated again.

Member seeds are the first N values of a fixed stream derived from `population_seed`, and each
member's sigma is drawn from `sigmas` by its seed, so shards and reruns agree on every member.
"""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from ..evaluate import Scores
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


def read_log(path: str) -> tuple[dict | None, list[Record], bool]:
    """(header, records, partial) of a population log, read-only. The part after the last newline
    is an unfinished write (partial=True) and is left out; an empty log has header None."""
    with open(path) as f:
        lines = f.read().split("\n")
    complete, partial = lines[:-1], bool(lines[-1])
    if not complete:
        return None, [], partial
    header = json.loads(complete[0]).get("header")
    return header, [Record(**json.loads(line)) for line in complete[1:]], partial


class PopulationLog:
    """Append-only JSONL: a header line {"header": {...}}, then one line per member."""

    def __init__(self, path: str, header: dict):
        self.path, self.header = path, header
        self.records: dict[int, Record] = {}
        if os.path.exists(path):
            self._load()
        else:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._append({"header": header})

    def _load(self) -> None:
        header, records, partial = read_log(self.path)
        if partial:
            log.warning("%s: dropping a truncated last line (interrupted write)", self.path)
            with open(self.path, "rb+") as f:  # cut it off, so appends stay line-aligned
                f.truncate(f.read().rfind(b"\n") + 1)
        if header is None:
            self._append({"header": self.header})
            return
        if header != self.header:
            raise ValueError(f"{self.path} was written by a different search "
                             f"(header {header} != {self.header}); use another "
                             f"output directory or delete the log")
        for rec in records:
            self.records[rec.seed] = rec

    def _append(self, obj: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(obj) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def add(self, record: Record) -> None:
        if record.seed in self.records:
            return
        self.records[record.seed] = record
        self._append(record.__dict__)


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
    pop_log = PopulationLog(log_path, header)
    todo = [s for s in seeds if s not in pop_log.records]
    if len(todo) < len(seeds):
        log.info("resuming: %d of %d members already in %s", len(seeds) - len(todo), len(seeds),
                 log_path)
    bar = tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="members", unit="member",
               disable=not progress)
    members = [Member.single(s, member_sigma(s, sigmas)) for s in todo]
    for m, scores in iter_member_scores(perturber, evaluator, examples, members, mode,
                                        population_batch):
        pop_log.add(Record.from_scores(m.seeds[0], m.coeffs[0], scores))
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
