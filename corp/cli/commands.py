"""The `corp` commands, one handler each, reading top to bottom."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time

import numpy as np
import torch

from ..method.export import CONSOLIDATION_ARTIFACTS, STREAMING_ARTIFACTS
from ..outputs import Commit, kill_point, read_json, verify_folder
from .session import Session
from .stats import gate_lines, result_row, results_table

log = logging.getLogger("corp")


def cmd_search(s: Session) -> dict:
    t = time.time()
    records = s.population()
    if s.cfg.get("_rank", 0) != 0:
        return {}  # rank 0 writes the summary
    base = s.scores("train")
    s.write_json("base_train.json", {"reward": base.reward, "accuracy": base.accuracy,
                                     "rewards": base.rewards.tolist()})
    rewards = np.array([r.reward for r in records])
    summary = {"members": len(records), "base_train_reward": base.reward,
               "best_train_reward": float(rewards.max()),
               "share_at_or_above_base": float(np.mean(rewards >= base.reward)),
               "seconds": time.time() - t}
    log.info("search: %s", summary)
    return summary


def cmd_consolidate(s: Session) -> dict:
    from ..method.consolidate import consolidate
    from .config import corp_config
    records = s.population(search_missing=False)
    t = time.time()
    config = corp_config(s.cfg)
    result = consolidate(s.perturber, s.evaluator, s.splits, records, config)
    out = {"run_id": s.run_id, "reason": result.reason, "seconds": time.time() - t,
           "corp_config": dataclasses.asdict(config), **result.to_json(),
           "rebuild": s.rebuild_section()}
    log.info("consolidate: %s", result.reason)
    # consolidation.json, adapter/ and merged-*/ are replaced together; a run whose gate keeps
    # the base model retires the previous run's adapter and checkpoints (corp.outputs)
    with Commit(s.out, CONSOLIDATION_ARTIFACTS, "consolidate", s.run_id) as commit:
        if result.update is not None:
            out.update(export_update(s, result.update, commit, config.gate_z))
        else:
            commit.why_retired = f"the gate kept the base model ({result.reason})"
        commit.write_json("consolidation.json", out)
    return out


# What export_update writes into consolidation.json about the adapter and merged-lowrank/ it
# exported (the exact update's test scores describe the update, not a file)
EXPORT_FIELDS = ("rank_choice", "layers", "test_reward_lowrank", "test_accuracy_lowrank",
                 "truncation_cost_reward")


def export_update(s: Session, update, commit: Commit, gate_z: float = 1.0) -> dict:
    """Stage the accepted update in `commit`: the LoRA adapter and merged checkpoint at the
    smallest rank that scores within the gate's tolerance of the exact update on the probe split
    (CoRP's probe: the first half of the validation split), or the exact merged checkpoint when no
    rank does; and measure exact and low-rank on the test split."""
    from ..method.export import (apply_factors_, candidate_ranks, choose_rank, low_rank_factors,
                                 write_adapter)
    from ..models import save_model
    out = {}
    factors = low_rank_factors(s.perturber, update, s.cfg["max_rank"],
                               s.cfg["energy_fraction"])
    from ..method.consolidate import probe_split
    probe = probe_split(s.splits)
    choice = choose_rank(s.perturber, update, factors, lambda model: s.evaluator(model, probe),
                         candidate_ranks(s.cfg["max_rank"]), gate_z)
    out["rank_choice"] = choice.to_json()
    log.info("export: %s", choice.reason)
    if choice.rank is not None:
        factors = [f.truncated(choice.rank) for f in factors]
        write_adapter(commit.folder("adapter"), factors, s.loaded.source)
        kill_point("export:adapter")
    out["layers"] = [{"name": f.name, "rank": f.rank, "energy_captured": f.energy_captured}
                     for f in factors] if choice.rank is not None else []
    with s.perturber.inplace(update):
        exact = s.scores("test")
        if s.cfg["save_exact"] or choice.rank is None:
            save_model(s.loaded, commit.folder("merged-exact"))
            kill_point("export:merged-exact")
    out["test_reward_exact"], out["test_accuracy_exact"] = exact.reward, exact.accuracy
    if choice.rank is None:
        return out
    s.perturber._take_backup()
    apply_factors_(s.model, factors)
    low = s.scores("test")
    save_model(s.loaded, commit.folder("merged-lowrank"))
    kill_point("export:merged-lowrank")
    s.perturber.restore_()
    out["test_reward_lowrank"], out["test_accuracy_lowrank"] = low.reward, low.accuracy
    out["truncation_cost_reward"] = exact.reward - low.reward
    log.info("low-rank adapter: rank %d; test reward exact %.4f vs low-rank %.4f", choice.rank,
             exact.reward, low.reward)
    return out


def cmd_ensemble(s: Session) -> dict:
    from ..method.ensemble import member_answers, top_k, vote_scores
    records = s.population(search_missing=False)
    k = s.cfg["top_k"]
    t = time.time()
    top = top_k(records, k)
    member_scores = member_answers(s.perturber, s.evaluator, s.splits["test"], top,
                                   s.cfg["mode"], s.cfg["population_batch"])
    vote = vote_scores(s.evaluator, member_scores, s.splits["test"])
    out = {"best_member": {"seed": str(top[0].seed), "sigma": top[0].sigma,
                           "train_reward": top[0].reward},
           "rows": [result_row("RandOpt best member", member_scores[0], 1, None),
                    result_row(f"RandOpt top-{k} vote", vote, k, time.time() - t)]}
    s.write_json("ensemble.json", out)
    return out


def cmd_eval(s: Session) -> dict:
    t = time.time()
    label = "base"
    model = s.model
    if s.cfg["checkpoint"]:
        from ..models import load_model
        model = load_model(s.cfg["checkpoint"], getattr(torch, s.cfg["dtype"]),
                           s.cfg["device"]).model
        label = f"checkpoint {s.cfg['checkpoint']}"
    elif s.cfg["adapter"]:
        from peft import PeftModel
        verify_folder(s.cfg["adapter"])  # one complete committed run, or a foreign adapter
        model = PeftModel.from_pretrained(s.model, s.cfg["adapter"]).eval()
        label = f"adapter {s.cfg['adapter']}"
    scores = s.evaluator(model, s.splits["test"])
    out = result_row(label, scores, 1, time.time() - t)
    s.write_json("eval.json", out)
    return out


def cmd_analyze(s: Session) -> dict:
    from ..method.analysis import figure, split_half, table
    records = s.population(search_missing=False)
    base = s.scores("train")
    rows = split_half(s.perturber, records, base.rewards, rank=s.cfg["analysis_rank"],
                      permutations=s.cfg["analysis_permutations"], seed=s.cfg["seed"],
                      layers=s.cfg["analysis_layers"], alpha=s.cfg["analysis_alpha"],
                      correction=s.cfg["analysis_correction"])
    md = table(rows)
    with open(s.path("analysis.md"), "w") as f:
        f.write(f"# Split-half analysis\n\n{len(records)} members, "
                f"{len(base.rewards)} train examples.\n\n{md}\n")
    figure(rows, s.path("analysis.png"))
    print(md)
    return {"rows": [r.to_json() for r in rows]}


def cmd_run(s: Session) -> dict:
    t0 = time.time()
    search = cmd_search(s)
    base = result_row("base model", s.scores("test"), 1, None)
    ens = cmd_ensemble(s)
    cons = cmd_consolidate(s)
    rows = [base, *ens["rows"]]
    if cons["update"] is not None:
        from ..models import load_model
        rank = cons["rank_choice"]["rank"]
        if rank is not None:
            merged = load_model(s.path("merged-lowrank"))
            rows.append(result_row(f"CoRP (low-rank adapter merged, rank {rank} chosen on the "
                                   "probe)", s.evaluator(merged.model, s.splits["test"]), 1, None))
        with s.perturber.inplace(cons_member(cons)):
            rows.append(result_row("CoRP (exact update)" + ("" if rank is not None else
                                   ": no rank within tolerance, exported merged"),
                                   s.scores("test"), 1, None))
    else:
        rows.append({**base, "method": "CoRP (no update passed the gate: base model)"})
    candidate = cons_member(cons, "candidate")
    if candidate is not None and (cons["update"] is None or candidate != cons_member(cons)):
        # What the gates were asked about: does their verdict look right on the test split?
        with s.perturber.inplace(candidate):
            rows.append(result_row("CoRP best Stage-1 candidate (ungated)", s.scores("test"), 1,
                                   None))
    md = results_table(rows) + "\n\nCoRP decisions:\n" + "\n".join(gate_lines(cons["decisions"]))
    text = (f"# corp run\n\nmodel: {s.loaded.source}\ntask: {s.task.name}; train/val/test = "
            f"{len(s.splits['train'])}/{len(s.splits['val'])}/{len(s.splits['test'])}; "
            f"N = {s.cfg['population']}, K = {s.cfg['top_k']}, sigmas = {s.cfg['sigmas']}\n"
            f"share of members at or above the base on train: "
            f"{search['share_at_or_above_base']:.2f}\nCoRP: {cons['reason']}\n"
            f"wall-clock: {time.time() - t0:.1f} s\n\n{md}\n")
    with open(s.path("results.md"), "w") as f:
        f.write(text)
    s.write_json("results.json", {"rows": rows, "search": search})
    print(text)
    return {"rows": rows}


def cons_member(cons: dict, key: str = "update"):
    """The Member stored under `key` of a consolidation's JSON (None when there is none)."""
    from ..method.consolidate import member_from_json
    return member_from_json(cons.get(key))


def cmd_consolidate_streaming(cfg: dict) -> dict:
    """Low-memory consolidation: needs the population log and a safetensors model folder only."""
    from ..method.consolidate import member_from_json
    from ..scale.streaming import (consolidate_streaming, parse_bytes, read_population,
                                   stage1_update)
    t = time.time()
    header, records = read_population(os.path.join(cfg["output_dir"], "population.jsonl"),
                                      cfg["model"], None if cfg["update"] else cfg["population"])
    names = header["parameters"]
    model_dir = cfg["model"]
    if cfg["update"]:
        u = read_json(cfg["update"]).get("update")  # refused if not its folder's committed run
        if u is None:
            raise SystemExit(f"corp: {cfg['update']} has no update (its gate kept the base)")
        update, source = member_from_json(u), cfg["update"]
    else:
        q, beta, alpha = cfg["stage1"]
        update = stage1_update(model_dir, records, names, q, beta, alpha)
        source = f"two-pass merge of {len(records)} members (q={q}, beta={beta}, alpha={alpha})"
    merged = None if cfg["merged"] == "none" else cfg["merged"]
    # rank 0 stages adapter/, merged-*/ and consolidation-streaming.json and commits them as one
    commit = (Commit(cfg["output_dir"], STREAMING_ARTIFACTS, "consolidate --streaming")
              if cfg.get("_rank", 0) == 0 else None)
    if commit is not None:  # consolidation.json stays; what it says of the export does not
        commit.supersede("consolidation.json", EXPORT_FIELDS,
                         "`corp consolidate --streaming` replaced adapter/ and merged-*/: "
                         "consolidation-streaming.json describes them")
    try:
        out = consolidate_streaming(model_dir, update, names, cfg["output_dir"],
                                    cfg["max_rank"], None, parse_bytes(cfg["max_memory"]), True,
                                    merged, progress=cfg["progress"], commit=commit)
        out.update(update=source, seconds=time.time() - t)
        if commit is None:
            return out
        out["run_id"] = commit.run_id
        commit.write_json("consolidation-streaming.json", out)
        commit.commit()
    except BaseException:
        if commit is not None:
            commit.abort()
        raise
    log.info("streaming consolidation: %s", out)
    return out


def cmd_rebuild(cfg: dict) -> dict:
    """Rebuild a consolidated model from its record (`corp experiment` writes one per task and
    procedure; `corp consolidate` writes consolidation.json): load the model the record names,
    check that its perturbed parameters have the recorded fingerprint, add the update exactly
    (seeds and coefficients through the noise contract), write merged-exact/ into --output-dir
    and score it on the task's test split next to the score the record reports."""
    from ..method.consolidate import member_from_json
    from ..method.population import model_fingerprint
    from ..models import save_model
    from .values import UsageError
    path = cfg["update"]
    if not path:
        raise UsageError("corp rebuild needs --update: a consolidation record (JSON)")
    with open(path) as f:
        record = json.load(f)
    how = record.get("rebuild")
    if not isinstance(how, dict) or "config" not in how:
        raise UsageError(f"--update {path} has no 'rebuild' section (records written before "
                         f"`corp rebuild` existed lack it); it cannot be rebuilt")
    update = member_from_json(record.get("update"))
    if update is None:
        raise SystemExit(f"corp: {path} has no update (its gate kept the base model): the "
                         f"consolidated model is the base model")
    # Every option that fixes the model, the task and its splits comes from the record (its
    # default where an older record lacks it), never from this command's flags or --config: a
    # config's task_options or splits would otherwise score the model on other test prompts.
    from .config import DEFAULTS
    recorded = {k: how["config"].get(k, DEFAULTS.get(k)) for k in Session.REBUILD_KEYS}
    session_cfg = {**cfg, **recorded, "parameters": how["parameters"], "population": 1,
                   "top_k": 1}
    s = Session(session_cfg)
    found = model_fingerprint(s.perturber.params)
    if found != how["fingerprint"]:
        raise SystemExit(f"corp: the model {session_cfg['model']} does not have the parameters "
                         f"{path} was consolidated on (fingerprint {found}, recorded "
                         f"{how['fingerprint']})")
    t = time.time()
    s.perturber.add_(update)
    s.perturber.rebase()
    test = s.scores("test")
    out = {"update": os.path.abspath(path), "procedure": record.get("procedure"),
           "test_reward": test.reward, "test_accuracy": test.accuracy,
           "recorded": (record.get("test_rows") or [None])[0], "seconds": time.time() - t}
    if out["recorded"] is None and "test_reward_exact" in record:  # corp consolidate's record
        out["recorded"] = {"method": "exact update", "reward": record["test_reward_exact"],
                           "accuracy": record["test_accuracy_exact"]}
    with Commit(s.out, ("merged-exact", "rebuild.json"), "rebuild", s.run_id) as commit:
        save_model(s.loaded, commit.folder("merged-exact"))
        commit.write_json("rebuild.json", out)
    recorded = out["recorded"]
    log.info("rebuilt %s: test reward %.4f, accuracy %.4f%s", path, test.reward, test.accuracy,
             "" if not recorded else f" (recorded: {recorded['method']}: reward "
             f"{recorded['reward']:.4f}, accuracy {recorded['accuracy']:.4f})")
    return out


def cmd_experiment(cfg: dict, config_path: str | None) -> dict:
    from .experiment import run_experiment
    cfg = dict(cfg, tasks=cfg["tasks"] or [cfg["task"]])
    reproduce = "corp experiment" + (f" --config {config_path}" if config_path else "")
    return run_experiment(cfg, reproduce)


COMMANDS = {"search": cmd_search, "consolidate": cmd_consolidate, "ensemble": cmd_ensemble,
            "eval": cmd_eval, "analyze": cmd_analyze, "run": cmd_run}
HELP = {"search": "evaluate N seeded members on the train split (resumable JSONL log)",
        "consolidate": "CoRP: fold the population into one model; LoRA adapter + checkpoint",
        "ensemble": "RandOpt baselines on the test split: best member and top-K vote",
        "eval": "test reward/accuracy of the base model, an adapter or a checkpoint",
        "analyze": "split-half low-rank analysis (table + figure)",
        "run": "search -> ensemble -> consolidate -> eval, with a results table",
        "experiment": "base / RandOpt / CoRP at N/10 / gradient baseline on several tasks: "
                      "table + figures in --results-dir",
        "rebuild": "rebuild a consolidated model from its record (--update FILE): merged-exact/ "
                   "in --output-dir, scored on the test split"}
