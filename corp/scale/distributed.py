"""Population search across processes and machines with torch.distributed (launched by torchrun;
gloo on CPU, NCCL on GPU).

Every rank holds its own copy of the base model and evaluates a disjoint shard of the seeds that
no earlier run has logged. Only (seed, sigma, rewards) records cross the wire; weights and noise
never do, because every rank regenerates a member's noise from its seed.

Logs: rank r appends to `population.rank<r>.jsonl` (its own file, fsynced per member, so a killed
rank loses at most the members in flight); at the end rank 0 gathers every record and writes the
ordinary `population.jsonl`, in seed order, which is byte-for-byte the file a single process
writes for the same seeds. On restart (same command, any number of ranks), every rank first reads
all logs, read-only, and only then does anyone write, so no logged member is evaluated again.
Each rank holds its rank log's lock, and rank 0 holds population.jsonl's from the start, so a
second search on the folder (one process or another job) is refused before it evaluates anything;
a member logged with different results in two of the logs is an error naming both lines.

Shards are whole groups of `population_batch` consecutive todo seeds, dealt round-robin, so in
population mode each member runs in the same batch as in a single-process run and the rewards
are bitwise equal (with the same number of threads per process).
"""

from __future__ import annotations

import glob
import logging
import os

import torch

from ..method.perturb import Member
from ..method.population import (PopulationLog, PopulationLogError, Record, check_header,
                                 iter_member_scores, member_record, member_sigma,
                                 read_log_lines)

log = logging.getLogger("corp")


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """(rank, world size); joins the process group when launched by torchrun with >1 rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1
    import torch.distributed as dist
    if not dist.is_initialized():
        dist.init_process_group("nccl" if str(device).startswith("cuda") else "gloo")
    if str(device).startswith("cuda"):
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return dist.get_rank(), dist.get_world_size()


def read_logs(output_dir: str, header: dict) -> dict[int, Record]:
    """Every record in population.jsonl and population.rank*.jsonl, read-only and checked line by
    line: a truncated last line (a rank killed mid-write) is ignored, a log of another search is
    refused, and a member logged with different results in two places is an error naming both
    (the same record in the rank log and the merged log is expected)."""
    records: dict[int, tuple[str, Record]] = {}
    paths = [os.path.join(output_dir, "population.jsonl")]
    paths += sorted(glob.glob(os.path.join(output_dir, "population.rank*.jsonl")))
    for path in paths:
        if not os.path.exists(path):
            continue
        found, logged, _ = read_log_lines(path)
        if found is None:
            continue
        check_header(path, found, header)
        for seed, (lineno, rec) in logged.items():
            where, known = records.setdefault(seed, (f"{path}:{lineno}", rec))
            if known != rec:
                raise PopulationLogError(
                    f"member {seed} is logged with different results at {where} and "
                    f"{path}:{lineno}; one of them comes from another run. Delete the wrong line "
                    f"(or both, to evaluate the member again)")
    return {seed: rec for seed, (_, rec) in records.items()}


def shard(todo: list[int], rank: int, world: int, group: int) -> list[int]:
    groups = [todo[i:i + group] for i in range(0, len(todo), group)]
    return [s for g in groups[rank::world] for s in g]


def distributed_search(perturber, evaluator, examples, seeds, sigmas, output_dir: str,
                       header: dict, mode: str = "auto", population_batch: int = 16,
                       progress: bool = True) -> list[Record]:
    import torch.distributed as dist
    from tqdm.auto import tqdm
    rank, world = dist.get_rank(), dist.get_world_size()
    # rank 0 holds the merged log's lock from the start, so a second search on this folder (one
    # process or another torchrun job) stops before evaluating anything
    merged = PopulationLog(os.path.join(output_dir, "population.jsonl"), header,
                           defer_header=True) if rank == 0 else None
    try:
        done = read_logs(output_dir, header)
        dist.barrier()  # everyone has read before anyone writes
        todo = [s for s in seeds if s not in done]
        mine = shard(todo, rank, world, population_batch)
        log.info("rank %d/%d: %d members logged before, %d to evaluate here", rank, world,
                 len(seeds) - len(todo), len(mine))
        with PopulationLog(os.path.join(output_dir, f"population.rank{rank}.jsonl"),
                           header) as rank_log:
            members = [Member.single(s, member_sigma(s, sigmas)) for s in mine]
            bar = tqdm(total=len(mine), desc=f"members (rank {rank})", unit="member",
                       disable=not progress, position=rank)
            for m, scores in iter_member_scores(perturber, evaluator, examples, members, mode,
                                                population_batch):
                rank_log.add(member_record(m, scores, evaluator, examples))
                bar.update(1)
            bar.close()
            mine_records = [rank_log.records[s].__dict__ for s in mine]
        parts: list = [None] * world
        dist.all_gather_object(parts, mine_records)
        for part in parts:
            for rec in part:
                done.setdefault(rec["seed"], Record(**rec))
        if merged is not None:
            for s in seeds:
                merged.add(done[s])
    finally:
        if merged is not None:
            merged.close()
    dist.barrier()
    return [done[s] for s in seeds]
