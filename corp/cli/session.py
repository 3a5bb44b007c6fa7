"""One command's working set: model, task, evaluator and perturber, built from the config."""

from __future__ import annotations

import os

import numpy as np
import torch

class Session:
    """Model, task, evaluator and perturber for one command, built from the config."""

    def __init__(self, cfg: dict):
        from ..builtin import DEFAULT_MODEL, SMOLLM2_MODEL, builtin_model, smollm2_dir
        from ..evaluate import TextEvaluator
        from ..method.perturb import PerturbationSpec, Perturber
        from ..method.population import model_fingerprint
        from ..models import load_model
        from ..tasks import load_task
        from ..outputs import new_run_id
        from .values import UsageError
        self.cfg, self.out = cfg, cfg["output_dir"]
        self.run_id = new_run_id()  # names this command's committed outputs (corp.outputs)
        try:
            sizes = cfg.get("splits")
            if isinstance(sizes, dict):  # per task, in `corp experiment`
                sizes = sizes.get(cfg["task"])
            if sizes is not None and str(cfg["task"]).endswith(".py"):
                raise UsageError(f"--splits applies to built-in tasks; {cfg['task']} sets its "
                                 f"own splits in its TASK object")
            cfg_options = (cfg.get("task_options") or {}).get(cfg["task"], {})
            options = dict(cfg_options)  # check_config allows them for built-in tasks only
            if sizes:
                options.update(zip(("n_train", "n_val", "n_test"), sizes))
            try:
                self.task = load_task(cfg["task"], **options)
            except (TypeError, ValueError) as e:  # an option the constructor refuses
                if not cfg_options:
                    raise
                raise UsageError(f"task_options for {cfg['task']!r}: {e}") from None
        except UsageError:
            raise
        except Exception as e:  # a user's task file may raise anything; say which file and what
            raise UsageError(f"task {cfg['task']!r} could not be loaded: "
                             f"{type(e).__name__}: {e}") from None
        try:
            self.splits = self.task.splits()
        except (TypeError, ValueError) as e:  # sizes or options the task cannot meet
            given = [f"--splits {cfg['splits']}" if cfg.get("splits") else "",
                     f"task_options for {cfg['task']!r} {cfg_options}" if cfg_options else ""]
            if not any(given):
                raise
            raise UsageError(f"{' and '.join(g for g in given if g)}: {e}") from None
        os.makedirs(self.out, exist_ok=True)  # after every check of the options
        if cfg["model"] == DEFAULT_MODEL:
            self.loaded = builtin_model(os.path.join(self.out, "base-model"), self.task,
                                        steps=cfg["builtin_steps"])
            # built and cached on the CPU in float32; --device and --dtype apply to it too
            self.loaded.model.to(device=cfg["device"], dtype=getattr(torch, cfg["dtype"]))
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
                       "sigmas": list(cfg["sigmas"]), "population_seed": cfg["population_seed"],
                       "fingerprint": model_fingerprint(self.perturber.params)}

    REBUILD_KEYS = ("model", "task", "splits", "task_options", "dtype", "include_embeddings",
                    "include_norms", "include_lm_head", "sigmas", "builtin_steps", "batch_size")

    def rebuild_section(self) -> dict:
        """What `corp rebuild` needs besides an update's seeds and coefficients: the options that
        fix the model, the task and its splits, the perturbed parameters by name, and their
        fingerprint (checked before the update is added)."""
        from ..method.population import model_fingerprint
        return {"config": {k: self.cfg.get(k) for k in self.REBUILD_KEYS},
                "parameters": [n for n, _ in self.perturber.params],
                "fingerprint": model_fingerprint(self.perturber.params)}

    def path(self, name: str) -> str:
        return os.path.join(self.out, name)

    def write_json(self, name: str, obj) -> None:
        from ..outputs import write_json_atomic
        write_json_atomic(self.path(name), obj)

    def population(self, search_missing: bool = True):
        from ..method.population import member_seeds, read_records, search
        seeds = member_seeds(self.cfg["population"], self.cfg["population_seed"])
        if search_missing and self.cfg.get("_world", 1) > 1:
            from ..scale.distributed import distributed_search
            return distributed_search(self.perturber, self.evaluator, self.splits["train"],
                                      seeds, self.cfg["sigmas"], self.out, self.header,
                                      self.cfg["mode"], self.cfg["population_batch"],
                                      self.cfg["progress"])
        if search_missing:
            return search(self.perturber, self.evaluator, self.splits["train"], seeds,
                          self.cfg["sigmas"], self.path("population.jsonl"), self.header,
                          self.cfg["mode"], self.cfg["population_batch"], self.cfg["progress"])
        records = read_records(self.path("population.jsonl"), self.header)  # no lock needed
        missing = [s for s in seeds if s not in records]
        if missing:
            raise SystemExit(f"corp: {len(missing)} of {len(seeds)} members are not in "
                             f"{self.path('population.jsonl')}; run `corp search` first")
        return [records[s] for s in seeds]

    def scores(self, split: str):
        return self.evaluator(self.model, self.splits[split])
