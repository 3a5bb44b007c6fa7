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
from ..method.population import PopulationLog, Record, iter_member_scores, member_sigma, read_log

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
    """Every record in population.jsonl and population.rank*.jsonl, read-only: a truncated last
    line (a rank killed mid-write) is ignored, a log of another search is refused."""
    records: dict[int, Record] = {}
    paths = [os.path.join(output_dir, "population.jsonl")]
    paths += sorted(glob.glob(os.path.join(output_dir, "population.rank*.jsonl")))
    for path in paths:
        if not os.path.exists(path):
            continue
        found, logged, _ = read_log(path)
        if found is None:
            continue
        if found != header:
            raise ValueError(f"{path} was written by a different search; use another output "
                             f"directory or delete the logs")
        for rec in logged:
            records.setdefault(rec.seed, rec)
    return records


def shard(todo: list[int], rank: int, world: int, group: int) -> list[int]:
    groups = [todo[i:i + group] for i in range(0, len(todo), group)]
    return [s for g in groups[rank::world] for s in g]


def distributed_search(perturber, evaluator, examples, seeds, sigmas, output_dir: str,
                       header: dict, mode: str = "auto", population_batch: int = 16,
                       progress: bool = True) -> list[Record]:
    import torch.distributed as dist
    from tqdm.auto import tqdm
    rank, world = dist.get_rank(), dist.get_world_size()
    done = read_logs(output_dir, header)
    dist.barrier()  # everyone has read before anyone writes
    todo = [s for s in seeds if s not in done]
    mine = shard(todo, rank, world, population_batch)
    log.info("rank %d/%d: %d members logged before, %d to evaluate here", rank, world,
             len(seeds) - len(todo), len(mine))
    rank_log = PopulationLog(os.path.join(output_dir, f"population.rank{rank}.jsonl"), header)
    members = [Member.single(s, member_sigma(s, sigmas)) for s in mine]
    bar = tqdm(total=len(mine), desc=f"members (rank {rank})", unit="member",
               disable=not progress, position=rank)
    for m, scores in iter_member_scores(perturber, evaluator, examples, members, mode,
                                        population_batch):
        rank_log.add(Record.from_scores(m.seeds[0], m.coeffs[0], scores))
        bar.update(1)
    bar.close()
    parts: list = [None] * world
    dist.all_gather_object(parts, [rank_log.records[s].__dict__ for s in mine])
    for part in parts:
        for rec in part:
            done.setdefault(rec["seed"], Record(**rec))
    if rank == 0:
        merged = PopulationLog(os.path.join(output_dir, "population.jsonl"), header)
        for s in seeds:
            merged.add(done[s])
    dist.barrier()
    return [done[s] for s in seeds]
