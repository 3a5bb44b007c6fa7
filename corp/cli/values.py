"""Every option value checked before a command starts: its type, its range, and that the files
and the device it names exist. A bad value is a `UsageError`: `corp: error: <what and why>` and
exit status 2, as argparse reports a bad flag, never a traceback.

A value's name in a message is the flag it came from (`--population`) or the YAML key and file
(`population in my.yaml`), so the user knows which one to fix.
"""

from __future__ import annotations

import math
import os


class UsageError(SystemExit):
    """A bad option value: exit status 2; str() is the message (main prints `corp: error: ...`)."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message

    def __str__(self) -> str:
        return self.message


def flag(key: str) -> str:
    return "--" + key.replace("_", "-")


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
CHOICES = {"mode": ("auto", "inplace", "fused", "population"),
           "dtype": ("float32", "bfloat16", "float16"), "merged": ("lowrank", "exact", "none"),
           "analysis_correction": ("holm", "bh"), "procedure": ("gated", "released")}
# integer options: smallest value; None where the option may be left unset
INT_MIN = {"population": 1, "population_seed": 0, "top_k": 1, "batch_size": 1,
           "population_batch": 1, "max_rank": 1, "stage2_rounds": 0, "stage2_members": 1,
           "seed": 0, "builtin_steps": 0, "analysis_rank": 1, "analysis_permutations": 1,
           "gradient_steps": 0, "gradient_samples": 1, "corp_population": 1}
OPTIONAL = {"procedures", "corp_configs", "corp_population", "sigmas", "parameters", "tasks", "analysis_layers", "corp_config",
            "adapter", "checkpoint", "update", "max_memory"}
BOOLS = ("include_embeddings", "include_norms", "include_lm_head", "save_exact", "progress",
         "streaming")
STRINGS = ("model", "task", "output_dir", "device", "results_dir", "experiment_name", "adapter",
           "checkpoint", "update", "log_level")
STRING_LISTS = ("parameters", "tasks", "analysis_layers")
# corp_config keys (CorpConfig fields): (kind, check, what the check says)
_POS = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
CORP_CONFIG = {"quantiles": ("floats", *_UNIT), "betas": ("floats", *_NONNEG),
               "alphas": ("floats", *_POS), "alpha_units": ("choice", ("member_norm", "raw")),
               "gate_z": ("float", *_NONNEG), "stage2_rounds": ("int", *_NONNEG),
               "stage2_max_accept": ("int", *_NONNEG), "stage2_max_reject": ("int", *_NONNEG),
               "stage2_members": ("int", *_POS), "stage2_rank": ("int", *_POS),
               "stage2_lambda": ("float", *_UNIT), "stage2_sigma": ("float?", *_POS),
               "stage2_alphas": ("floats", *_POS), "regression_weight": ("float", *_NONNEG),
               "seed": ("int", *_NONNEG), "procedure": ("choice", ("gated", "released"))}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_task_options(options: dict, where: str) -> None:
    """Every task named is a built-in one (a typo is not silently ignored; a config may name
    tasks a flag leaves out of this run) whose constructor takes the options: checked before
    anything runs, not when a later task of an experiment starts."""
    import inspect
    from ..tasks import BUILTIN_TASKS
    for task, opts in options.items():
        if task not in BUILTIN_TASKS:
            raise UsageError(f"{where}: {task!r} is not a built-in task (options apply to "
                             f"{', '.join(sorted(BUILTIN_TASKS))}; a task file builds its own)")
        sizes = sorted({"n_train", "n_val", "n_test"} & set(opts))
        if sizes:
            raise UsageError(f"{where}: {task}: set prompt counts with splits, not {sizes}")
        try:
            inspect.signature(BUILTIN_TASKS[task]).bind_partial(**opts)
        except TypeError as e:
            raise UsageError(f"{where}: {task}: {e}") from None


def check_config(cfg: dict, origin: dict[str, str], command: str) -> None:
    """Raise UsageError for the first bad value in `cfg`; `origin[key]` names where it came from
    (a flag or a YAML file)."""
    def name(key):
        return origin.get(key, flag(key))

    def bad(key, want):
        raise UsageError(f"{name(key)} must be {want}, got {cfg[key]!r}")

    for key, low in INT_MIN.items():
        if key not in cfg or (cfg[key] is None and key in OPTIONAL):
            continue
        if not _is_int(cfg[key]) or cfg[key] < low:
            bad(key, f"an integer >= {low}")
    for key in BOOLS:
        if key in cfg and not isinstance(cfg[key], bool):
            bad(key, "true or false")
    for key in STRINGS:
        if key in cfg and not (cfg[key] is None and key in OPTIONAL) and (
                not isinstance(cfg[key], str) or not cfg[key]):
            bad(key, "a non-empty string")
    for key in STRING_LISTS:
        value = cfg.get(key)
        if value is not None and (not isinstance(value, list) or not value
                                  or not all(isinstance(v, str) and v for v in value)):
            bad(key, "a non-empty list of names")
    for key, choices in CHOICES.items():
        if key in cfg and cfg[key] not in choices:
            bad(key, f"one of {', '.join(choices)}")
    if str(cfg["log_level"]).upper() not in LOG_LEVELS:
        bad("log_level", f"one of {', '.join(LOG_LEVELS)}")

    sigmas = cfg["sigmas"]
    if not isinstance(sigmas, list) or not sigmas or not all(
            _is_number(s) and s > 0 for s in sigmas):
        raise UsageError(f"{name('sigmas')}: sigmas must be a non-empty list of finite numbers "
                         f"> 0, got {sigmas!r}")
    if not (_is_number(cfg["energy_fraction"]) and 0 < cfg["energy_fraction"] <= 1):
        bad("energy_fraction", "a number in (0, 1]")
    if "analysis_alpha" in cfg and not (_is_number(cfg["analysis_alpha"])
                                        and 0 < cfg["analysis_alpha"] < 1):
        bad("analysis_alpha", "a number in (0, 1)")
    if "analysis_permutations" in cfg:
        from ..method.analysis import MIN_PERMUTATIONS
        if cfg["analysis_permutations"] < MIN_PERMUTATIONS:
            bad("analysis_permutations", f"an integer >= {MIN_PERMUTATIONS} (p >= 1/(1+P))")
    if cfg["top_k"] > cfg["population"]:
        raise UsageError(f"{name('top_k')} {cfg['top_k']} exceeds {name('population')} "
                         f"{cfg['population']} (K <= N)")
    if cfg.get("corp_population") and cfg["corp_population"] > cfg["population"]:
        raise UsageError(f"{name('corp_population')} {cfg['corp_population']} exceeds "
                         f"{name('population')} {cfg['population']}")
    splits = cfg.get("splits")

    def sizes_ok(v):
        return isinstance(v, list) and len(v) == 3 and all(_is_int(n) and n >= 1 for n in v)
    if splits is not None and not (sizes_ok(splits) or (
            isinstance(splits, dict) and splits and all(sizes_ok(v) for v in splits.values()))):
        bad("splits", "three integers >= 1 (train, val, test prompts), or a mapping from task "
            "names to such lists")
    options = cfg.get("task_options")
    if options is not None and not (isinstance(options, dict) and all(
            isinstance(t, str) and isinstance(o, dict) and all(isinstance(k, str) for k in o)
            for t, o in options.items())):
        bad("task_options", "a mapping from task names to mappings of constructor options "
            "(e.g. {code: {max_k: 25}})")
    if options:
        _check_task_options(options, name("task_options"))
    _check_stage1(cfg["stage1"], name("stage1"))
    _check_corp_config(cfg["corp_config"], name("corp_config"))
    procedures = cfg.get("procedures")
    if procedures is not None and (not isinstance(procedures, list) or not procedures or any(
            p not in CHOICES["procedure"] for p in procedures) or len(set(procedures)) <
            len(procedures)):
        bad("procedures", f"a list of distinct procedures from {', '.join(CHOICES['procedure'])}")
    per_procedure = cfg.get("corp_configs")
    if per_procedure is not None:
        if not isinstance(per_procedure, dict) or set(per_procedure) - set(CHOICES["procedure"]):
            bad("corp_configs", f"a mapping from procedures ({', '.join(CHOICES['procedure'])}) "
                "to CoRP settings")
        for procedure, value in per_procedure.items():
            _check_corp_config(value, f"{name('corp_configs')}: {procedure}")
    if cfg["max_memory"] is not None:
        from ..scale.streaming import parse_bytes
        try:
            size = parse_bytes(cfg["max_memory"])
        except (ValueError, TypeError):
            size = None
        if not _is_int(size) or size <= 0:
            bad("max_memory", "a memory size such as 2GiB or 512MB")
    _check_paths(cfg, name, command)
    _check_device(cfg, name, command)


def _check_stage1(value, where: str) -> None:
    if not (isinstance(value, list) and len(value) == 3 and all(map(_is_number, value))):
        raise UsageError(f"{where} must be three numbers Q BETA ALPHA, got {value!r}")
    q, beta, alpha = value
    if not 0 <= q <= 1:
        raise UsageError(f"{where}: the quantile Q must be in [0, 1], got {q}")
    if beta < 0:
        raise UsageError(f"{where}: the temperature BETA must be >= 0, got {beta}")
    if alpha <= 0:
        raise UsageError(f"{where}: the step ALPHA must be > 0, got {alpha}")


def _check_corp_config(value, where: str) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping of CoRP settings, got {value!r}")
    unknown = sorted(set(value) - set(CORP_CONFIG))
    if unknown:
        raise UsageError(f"unknown keys {unknown} in {where}; valid keys: "
                         f"{', '.join(sorted(CORP_CONFIG))}")
    for key, v in value.items():
        kind, check, *say = CORP_CONFIG[key]
        label = f"{where}: {key}"
        if kind == "choice":
            if v not in check:
                raise UsageError(f"{label} must be one of {', '.join(check)}, got {v!r}")
            continue
        want = say[0]
        if kind == "floats":
            if not (isinstance(v, list) and v and all(_is_number(x) and check(x) for x in v)):
                raise UsageError(f"{label} must be a non-empty list of numbers {want}, got {v!r}")
        elif kind == "int":
            if not (_is_int(v) and check(v)):
                raise UsageError(f"{label} must be an integer {want}, got {v!r}")
        elif not ((v is None and kind == "float?") or (_is_number(v) and check(v))):
            raise UsageError(f"{label} must be a number {want}, got {v!r}")


def _writable_folder(path: str, where: str) -> None:
    """`path` is a folder or can be created as one."""
    if os.path.exists(path):
        if not os.path.isdir(path):
            raise UsageError(f"{where} {path!r} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise UsageError(f"{where} {path!r} is not writable")
        return
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UsageError(f"{where} {path!r} cannot be created: {parent!r} is a file")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UsageError(f"{where} {path!r} cannot be created: {parent!r} is not writable")


def _check_paths(cfg: dict, name, command: str) -> None:
    from ..builtin import DEFAULT_MODEL, SMOLLM2_MODEL
    from ..tasks import BUILTIN_TASKS
    _writable_folder(cfg["output_dir"], name("output_dir"))
    if command == "experiment":
        _writable_folder(cfg["results_dir"], name("results_dir"))
        if os.sep in cfg["experiment_name"]:
            raise UsageError(f"{name('experiment_name')} must be a file name stem, got "
                             f"{cfg['experiment_name']!r}")
    model = cfg["model"]
    if model.startswith("builtin:"):
        if model not in (DEFAULT_MODEL, SMOLLM2_MODEL):
            raise UsageError(f"{name('model')}: unknown built-in model {model!r}; built-ins are "
                             f"{DEFAULT_MODEL} and {SMOLLM2_MODEL}")
    elif not os.path.isdir(model):
        raise UsageError(f"{name('model')} {model!r} is not a folder (corp never downloads "
                         f"models: pass a local Hugging Face model folder or a builtin: name)")
    for key, task in [("task", cfg["task"])] + [("tasks", t) for t in cfg["tasks"] or []]:
        if task.endswith(".py"):
            if not os.path.isfile(task):
                raise UsageError(f"{name(key)}: task file {task!r} does not exist")
        elif task not in BUILTIN_TASKS:
            raise UsageError(f"{name(key)}: unknown task {task!r}; built-in tasks are "
                             f"{', '.join(sorted(BUILTIN_TASKS))}, or pass a .py file defining "
                             f"TASK")
    for key in ("adapter", "checkpoint"):
        if cfg[key] is not None and not os.path.isdir(cfg[key]):
            from ..outputs import why_missing
            raise UsageError(f"{name(key)} {cfg[key]!r} is not a folder{why_missing(cfg[key])}")
    if cfg["update"] is not None and not os.path.isfile(cfg["update"]):
        raise UsageError(f"{name('update')} {cfg['update']!r} is not a file")


def _check_device(cfg: dict, name, command: str) -> None:
    """The device must parse, exist here, and be one the command uses."""
    import torch
    text = cfg["device"]
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise UsageError(f"{name('device')}: {text!r} is not a device (cpu, cuda or cuda:N)") \
            from None
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"{name('device')}: corp runs on cpu or cuda, not {device.type}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is built without CUDA" if torch.version.cuda is None
                   else "no CUDA device is visible")
            raise UsageError(f"{name('device')} {text}: CUDA is not available here ({why}; "
                             f"torch {torch.__version__})")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise UsageError(f"{name('device')} {text}: there are {count} CUDA devices "
                             f"(cuda:0 .. cuda:{count - 1})")
        if command == "consolidate" and cfg["streaming"]:
            raise UsageError(f"{name('device')} {text}: consolidate --streaming computes on the "
                             f"CPU (it never loads the model); leave --device out")
