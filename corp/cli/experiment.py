"""`corp experiment`: RandOpt vs. CoRP (vs. base and a gradient baseline) on several tasks.

For each task, in `output_dir/<task>/`:
1. Search N members on the train split (the resumable population log). The first N_corp members
   (N_corp = N / 10 by default) are searched first and timed on their own: they are CoRP's
   whole population, so CoRP's budget is a tenth of RandOpt's.
2. Test rows: base model; RandOpt's best member (1 pass); RandOpt's top-K vote (K passes);
   CoRP on the first N_corp members (1 pass), and its best Stage-1 candidate when a gate did not
   commit it (what the gates were asked about); RandOpt's best member and vote from the same
   N_corp members (CoRP's budget); reward-weighted fine-tuning (1 pass). Every CoRP decision is
   listed with its gain and the gain its gate could have detected (80% power).
3. The split-half analysis of the full population (chosen layers + example space).
Then one markdown table, a JSON file and two figures for all tasks go to `results_dir`.
Accuracy and mean reward carry 95% bootstrap intervals over test examples.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time

import numpy as np

log = logging.getLogger("corp")


def _interval(values) -> list[float]:
    from .stats import bootstrap_ci
    return bootstrap_ci(np.asarray(values, dtype=float))


def _row(task, method, scores, passes, evaluations, train_s, test_s, note=""):
    """One row of the table. `rewards` (per test prompt, in the split's order) lets every pair
    of rows be compared on the same prompts (`paired_comparisons`), here or from the JSON."""
    return {"task": task, "method": method, "reward": scores.reward,
            "reward_ci": _interval(scores.rewards), "accuracy": scores.accuracy,
            "accuracy_ci": _interval(scores.correct), "forward_passes": passes,
            "member_evaluations": evaluations, "train_seconds": train_s, "test_seconds": test_s,
            "note": note, "rewards": [float(x) for x in scores.rewards]}


def paired_comparisons(rows: list[dict]) -> list[dict]:
    """Per task, on the same test prompts: every method against the base model, and every CoRP
    row against every RandOpt row (best member and vote, at full N and at CoRP's budget). Each
    comparison: the mean reward difference, its 95% interval (mean +- 1.96 SE of the paired
    differences) and `mde80`, the true difference a two-sided 5% test would find with 80%
    power at this n and spread: an interval that spans 0 next to an mde80 of 0.05 reads "a
    difference under about 5 points would go unseen here", not "no difference"."""
    from ..method.consolidate import paired_stats
    out = []
    for task in dict.fromkeys(r["task"] for r in rows):
        mine = [r for r in rows if r["task"] == task and "rewards" in r]
        base = [r for r in mine if r["method"] == "base model"]
        corp = [r for r in mine if r["method"].startswith("CoRP")]
        randopt = [r for r in mine if r["method"].startswith("RandOpt")]
        pairs = [(r, base[0]) for r in mine if base and r is not base[0]]
        pairs += [(c, r) for c in corp for r in randopt]
        for new, old in pairs:
            st = paired_stats(np.array(new["rewards"]), np.array(old["rewards"]), 1.96)
            half = 1.96 * st["se"]
            out.append({"task": task, "method": new["method"], "against": old["method"],
                        "diff": st["mean_diff"], "ci95": [st["mean_diff"] - half,
                                                          st["mean_diff"] + half],
                        "mde80": st["mde80"], "n": st["n"]})
    return out


def paired_table(comparisons: list[dict]) -> str:
    lines = ["| task | method | against | reward difference [95% CI] | detectable (80%) | n |",
             "|---|---|---|---|---|---|"]
    for c in comparisons:
        if c["mde80"] == 0:  # the same reward on every prompt (a gate kept the base)
            diff, mde = f"{c['diff']:+.3f} (identical on every prompt)", "-"
        else:
            diff = f"{c['diff']:+.3f} [{c['ci95'][0]:+.3f}, {c['ci95'][1]:+.3f}]"
            mde = f"{c['mde80']:.3f}"
        lines.append(f"| {c['task']} | {c['method']} | {c['against']} | {diff} | {mde} | "
                     f"{c['n']} |")
    return "\n".join(lines)


def _timed(fn, *args, **kwargs):
    t = time.time()
    out = fn(*args, **kwargs)
    return out, time.time() - t


def _test_scores(s, members, test) -> tuple[list, list[float]]:
    """Each member's test scores and the seconds each took, in the members' order."""
    from ..method.population import iter_member_scores
    scores, seconds = [], []
    t = time.time()
    for _, member_scores in iter_member_scores(s.perturber, s.evaluator, test,
                                               [r.member for r in members], s.cfg["mode"],
                                               s.cfg["population_batch"]):
        scores.append(member_scores)
        seconds.append(time.time() - t)
        t = time.time()
    return scores, seconds


# Options that do not change any number of the experiment (where results go, how it logs).
_NOT_RESULTS = ("progress", "log_level", "results_dir", "experiment_name", "output_dir", "tasks",
                "task")
# Options that change only CoRP's steps (which pass their procedure's CorpConfig as `extra`) or
# only the gradient baseline's and the analysis': the other steps do not depend on them, so
# changing, say, the released procedure's grid recomputes its steps and nothing else.
_STEP_SPECIFIC = ("procedure", "procedures", "corp_config", "corp_configs", "stage2_rounds",
                  "stage2_members", "max_rank", "energy_fraction", "gradient_steps",
                  "gradient_samples", "analysis_rank", "analysis_layers", "analysis_permutations",
                  "analysis_alpha", "analysis_correction")
# Options added after committed runs existed, left out of fingerprints while at their default so
# those runs' finished steps are still reused (their numbers do not depend on the new option).
_ADDED_LATER = {"task_options": None}


def _hash(obj) -> str:
    import hashlib
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Steps:
    """The experiment's finished steps, one JSON file each in `<task folder>/experiment-steps/`,
    written atomically, so that a rerun after an interruption skips what is done (the search
    resumes from its own log). A step file records the fingerprint of the options that decide
    its numbers (the shared ones, plus the step's own `extra`, e.g. its CorpConfig); other
    options recompute it. A file fingerprinted with the whole configuration (written before
    fingerprints were per step) is reused when the whole configuration is the same."""

    def __init__(self, folder: str, cfg: dict):
        self.folder = folder
        os.makedirs(folder, exist_ok=True)
        relevant = {k: v for k, v in cfg.items() if k not in _NOT_RESULTS and
                    not k.startswith("_") and not (k in _ADDED_LATER and (v == _ADDED_LATER[k] or v == {}))}
        self.whole = _hash(relevant)
        self.shared = {k: v for k, v in relevant.items() if k not in _STEP_SPECIFIC}

    def get(self, name: str, compute, extra=None):
        """The stored value of step `name`, or compute(), stored (a JSON-able value)."""
        from ..outputs import write_json_atomic
        path = os.path.join(self.folder, f"{name}.json")
        fingerprint = _hash({"shared": self.shared, "extra": extra})
        if os.path.exists(path):
            with open(path) as f:
                stored = json.load(f)
            if stored.get("fingerprint") in (fingerprint, self.whole):
                log.info("experiment: step %s done before (%s), reused", name, path)
                return stored["value"]
            log.info("experiment: step %s was done with other options; recomputing", name)
        value = compute()
        write_json_atomic(path, {"fingerprint": fingerprint, "value": value})
        return value


def _scores_json(scores) -> dict:
    return {"rewards": scores.rewards.tolist(), "correct": scores.correct.tolist(),
            "answers": list(scores.answers)}


def _scores_from(obj):
    from ..evaluate import Scores
    return Scores(np.array(obj["rewards"], dtype=float), np.array(obj["correct"], dtype=bool),
                  list(obj["answers"]))


def _timed_scores(fn) -> dict:
    scores, seconds = _timed(fn)
    return {"scores": _scores_json(scores), "seconds": seconds}


def _members_test(s, members, test) -> dict:
    scores, seconds = _test_scores(s, members, test)
    return {"scores": [_scores_json(x) for x in scores], "seconds": seconds}


def rebuild_record(s, result, procedure: str, corp_cfg) -> dict:
    """The record `corp rebuild` rebuilds this consolidated model from: the update as seeds and
    coefficients, and the session's rebuild section (model, task, perturbed parameters)."""
    import dataclasses
    return {"procedure": procedure, **result.to_json(),
            "corp_config": dataclasses.asdict(corp_cfg), "rebuild": s.rebuild_section()}


def corp_rows(s, steps: Steps, procedure: str, corp_records, n_corp: int, t_corp_search: float,
              base, t_base) -> tuple[list[dict], dict]:
    """CoRP's rows for one procedure: the consolidated model (exact update), its low-rank form
    at the rank chosen on the probe, and its best Stage-1 candidate when that is not what was
    committed; and the record that rebuilds it."""
    from ..method.consolidate import ConsolidationResult, consolidate, probe_split
    from ..method.export import (candidate_ranks, choose_rank, low_rank_factors,
                                 score_with_factors)
    from .config import corp_config
    cfg, task, test = s.cfg, s.task.name, s.splits["test"]
    corp_cfg = corp_config(cfg, procedure)
    import dataclasses
    own = {"corp": dataclasses.asdict(corp_cfg), "max_rank": cfg["max_rank"],
           "energy_fraction": cfg["energy_fraction"]}

    def run():
        result, seconds = _timed(consolidate, s.perturber, s.evaluator, s.splits, corp_records,
                                 corp_cfg)
        return {"result": result.to_json(), "seconds": seconds}

    done = steps.get(f"corp-{procedure}", run, own)
    result, t_cons = ConsolidationResult.from_json(done["result"]), done["seconds"]
    train_s = t_corp_search + t_cons
    name = f"CoRP {procedure} (N={n_corp})"
    rows = []
    if result.update is not None:
        @functools.cache
        def factors():
            """The update's factors, computed once for the rank choice and the largest rank
            (a randomized SVD of every layer: minutes on SmolLM2), and only if a step needs them."""
            return low_rank_factors(s.perturber, result.update, cfg["max_rank"],
                                    cfg["energy_fraction"])

        def exact():
            with s.perturber.inplace(result.update):
                return _timed_scores(lambda: s.evaluator(s.model, test))
        got = steps.get(f"corp-{procedure}-test", exact, own)
        rows.append(_row(task, name, _scores_from(got["scores"]), 1, n_corp, train_s,
                         got["seconds"], result.reason))

        def low_rank():
            probe = probe_split(s.splits)
            choice = choose_rank(s.perturber, result.update, factors(),
                                 lambda model: s.evaluator(model, probe),
                                 candidate_ranks(cfg["max_rank"]), corp_cfg.gate_z)
            out = {"rank": choice.rank, "reason": choice.reason}
            if choice.rank is not None:
                out.update(_timed_scores(lambda: score_with_factors(
                    s.perturber, [f.truncated(choice.rank) for f in factors()],
                    lambda model: s.evaluator(model, test))))
            return out
        low = steps.get(f"corp-{procedure}-lowrank", low_rank, own)
        if low["rank"] is not None:
            rows.append(_row(task, f"{name} low-rank, rank {low['rank']} chosen on the probe",
                             _scores_from(low["scores"]), 1, n_corp, train_s, low["seconds"],
                             low["reason"]))
        else:
            # No rank is exported, but the table still shows what truncation costs: the largest
            # rank the probe tried, scored on test.
            rows[-1]["note"] += f"; {low['reason']}"

            def largest_rank():
                r = min(max(candidate_ranks(cfg["max_rank"])), max(f.rank for f in factors()))
                got = _timed_scores(lambda: score_with_factors(
                    s.perturber, [f.truncated(r) for f in factors()],
                    lambda model: s.evaluator(model, test)))
                return {**got, "rank": r}
            got = steps.get(f"corp-{procedure}-lowrank-largest", largest_rank, own)
            rows.append(_row(task, f"{name} low-rank, rank {got['rank']}, not exported "
                             "(outside the probe's tolerance)", _scores_from(got["scores"]), 1,
                             n_corp, train_s, got["seconds"]))
    else:
        rows.append(_row(task, f"{name}, gate kept the base", base, 1, n_corp, train_s, t_base,
                         result.reason))
    if result.candidate is not None and result.candidate != result.update:
        # What the gates were asked about: does their verdict hold on the test split?
        def candidate():
            with s.perturber.inplace(result.candidate):
                return _timed_scores(lambda: s.evaluator(s.model, test))
        got = steps.get(f"corp-{procedure}-candidate", candidate, own)
        rows.append(_row(task, f"CoRP {procedure}: best Stage-1 candidate, ungated "
                         f"(N={n_corp})", _scores_from(got["scores"]), 1, n_corp, train_s,
                         got["seconds"]))
    record = rebuild_record(s, result, procedure, corp_cfg)
    record["test_rows"] = [{k: r[k] for k in ("method", "reward", "reward_ci", "accuracy",
                                               "accuracy_ci")} for r in rows]
    return rows, record


def run_task(s) -> tuple[list[dict], list, dict]:
    from ..method.analysis import OverlapRow, split_half
    from ..method.ensemble import top_k, vote_scores
    from ..method.population import member_seeds, search
    from .gradient import reward_weighted_finetune
    cfg, task = s.cfg, s.task.name
    n, k = cfg["population"], cfg["top_k"]
    n_corp = cfg["corp_population"] or max(4, n // 10)
    procedures = cfg.get("procedures") or [cfg["procedure"]]
    steps = Steps(s.path("experiment-steps"), cfg)
    seeds = member_seeds(n, cfg["population_seed"])
    args = (s.perturber, s.evaluator, s.splits["train"])
    common = dict(sigmas=cfg["sigmas"], log_path=s.path("population.jsonl"), header=s.header,
                  mode=cfg["mode"], population_batch=cfg["population_batch"],
                  progress=cfg["progress"])
    # Each half of the search is timed where it ran; a resumed search reports its first run's
    # times (the population log has them as no step file does), so they are kept as steps too.
    corp_records, t = _timed(search, *args, seeds[:n_corp], **common)
    t_corp_search = steps.get("search-corp-seconds", lambda: t)
    records, t = _timed(search, *args, seeds, **common)
    t_search = t_corp_search + steps.get("search-rest-seconds", lambda: t)
    test = s.splits["test"]

    got = steps.get("base-test", lambda: _timed_scores(lambda: s.evaluator(s.model, test)))
    base, t_base = _scores_from(got["scores"]), got["seconds"]
    rows = [_row(task, "base model", base, 1, 0, 0.0, t_base)]

    got = steps.get("randopt-test", lambda: _members_test(s, top_k(records, k), test))
    member_scores, member_seconds = [_scores_from(x) for x in got["scores"]], got["seconds"]
    rows.append(_row(task, f"RandOpt best member (N={n})", member_scores[0], 1, n, t_search,
                     member_seconds[0]))
    vote = vote_scores(s.evaluator, member_scores, test)
    rows.append(_row(task, f"RandOpt top-{k} vote (N={n})", vote, k, n, t_search,
                     sum(member_seconds)))

    records_out, decisions = {}, {}
    for procedure in procedures:
        corp, record = corp_rows(s, steps, procedure, corp_records, n_corp, t_corp_search, base,
                                 t_base)
        rows += corp
        records_out[procedure] = record
        from .stats import gate_lines
        decisions[procedure] = gate_lines(record["decisions"])
    # RandOpt on CoRP's budget: best member and vote from the same N_corp members CoRP used.
    k_corp = min(k, n_corp)
    if n_corp < n:
        got = steps.get("randopt-corp-budget-test",
                        lambda: _members_test(s, top_k(corp_records, k_corp), test))
        small_scores, small_seconds = [_scores_from(x) for x in got["scores"]], got["seconds"]
        rows.append(_row(task, f"RandOpt best member (N={n_corp}, CoRP's budget)",
                         small_scores[0], 1, n_corp, t_corp_search, small_seconds[0]))
        rows.append(_row(task, f"RandOpt top-{k_corp} vote (N={n_corp}, CoRP's budget)",
                         vote_scores(s.evaluator, small_scores, test), k_corp, n_corp,
                         t_corp_search, sum(small_seconds)))
    # replaces the folder's consolidation.json (the first procedure's) and retires an adapter or
    # checkpoints that an earlier `corp consolidate` exported there: they would not be this
    # update's (corp.outputs)
    from ..method.export import CONSOLIDATION_ARTIFACTS
    from ..outputs import Commit, write_json_atomic
    first = records_out[procedures[0]]
    with Commit(s.out, CONSOLIDATION_ARTIFACTS, "experiment", s.run_id) as commit:
        commit.why_retired = "`corp experiment` consolidated without exporting"
        commit.write_json("consolidation.json", first)
    for procedure, record in records_out.items():
        write_json_atomic(s.path(f"consolidation-{procedure}.json"), record)

    if cfg["gradient_steps"] > 0:
        def gradient():
            (tuned, info), t_grad = _timed(reward_weighted_finetune, s.model, s.evaluator,
                                           s.splits["train"], samples=cfg["gradient_samples"],
                                           steps=cfg["gradient_steps"], seed=cfg["seed"])
            got = _timed_scores(lambda: s.evaluator(tuned, test))
            return {**got, "train_seconds": t_grad, "sequences": info["training_sequences"]}
        got = steps.get("gradient", gradient,
                        {k: cfg[k] for k in ("gradient_steps", "gradient_samples")})
        rows.append(_row(task, f"reward-weighted fine-tuning ({cfg['gradient_steps']} steps)",
                         _scores_from(got["scores"]), 1, 0, got["train_seconds"],
                         got["seconds"], f"{got['sequences']} sequences, "
                         f"{cfg['gradient_samples']} samples/prompt"))

    got = steps.get("base-train", lambda: _scores_json(s.evaluator(s.model,
                                                                    s.splits["train"])))
    base_train = _scores_from(got)
    # A step like the others: on SmolLM2 it regenerates every member's noise for every layer
    # (about ten minutes), which a resumed experiment used to spend again on every invocation.
    analysis_options = {k: cfg[k] for k in ("analysis_rank", "analysis_permutations",
                                            "analysis_layers", "analysis_alpha",
                                            "analysis_correction")}
    got = steps.get("split-half", lambda: [row.to_json() for row in split_half(
        s.perturber, records, base_train.rewards, rank=cfg["analysis_rank"],
        permutations=cfg["analysis_permutations"], seed=cfg["seed"],
        layers=cfg["analysis_layers"], alpha=cfg["analysis_alpha"],
        correction=cfg["analysis_correction"])], analysis_options)
    analysis = [OverlapRow.from_json(row) for row in got]
    rewards = np.array([r.reward for r in records])
    summary = {"task": task, "share_at_or_above_base": float(np.mean(rewards >= base_train.reward)),
               "corp_decisions": decisions, "base_train_reward": base_train.reward,
               "best_train_reward": float(rewards.max()),
               "n": n, "n_corp": n_corp, "k": k, "search_seconds": t_search,
               "procedures": procedures,
               "splits": "/".join(str(len(s.splits[x])) for x in ("train", "val", "test"))}
    from ..outputs import write_atomic
    write_atomic(s.path("experiment.json"), json.dumps(
        {"rows": rows, "summary": summary, "analysis": [r.to_json() for r in analysis]},
        indent=2, default=str))
    return rows, analysis, summary, records_out


def _fmt_ci(value, ci) -> str:
    return f"{value:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]"


def table(rows: list[dict]) -> str:
    lines = ["| task | method | test accuracy [95% CI] | test reward [95% CI] | member evals | "
             "train wall-clock (s) | test wall-clock (s) | forward passes / example |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['method']} | {_fmt_ci(r['accuracy'], r['accuracy_ci'])}"
                     f" | {_fmt_ci(r['reward'], r['reward_ci'])} | {r['member_evaluations']} | "
                     f"{r['train_seconds']:.0f} | {r['test_seconds']:.0f} | "
                     f"{r['forward_passes']} |")
    return "\n".join(lines)


def figure(rows: list[dict], path: str) -> str:
    """One panel per task: test reward of each method as a horizontal bar with its 95% interval
    (accuracy as a dot where it differs from the reward), the base model's reward as a dashed line
    so that a gain reads as a bar past it. Horizontal, because method names are long."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    most = max(sum(r["task"] == t for r in rows) for t in tasks)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5.5 * len(tasks), 0.9 + 0.42 * most),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        mine = [r for r in rows if r["task"] == task]
        y = np.arange(len(mine))[::-1]  # first row on top
        vals = np.array([r["reward"] for r in mine])
        ci = np.array([r["reward_ci"] for r in mine])
        ax.barh(y, vals, 0.6, color="tab:blue", xerr=[vals - ci[:, 0], ci[:, 1] - vals],
                capsize=3, label="test reward (95% CI)")
        acc = np.array([r["accuracy"] for r in mine])
        if not np.allclose(acc, vals):
            ax.plot(acc, y, "o", color="black", ms=4, label="test accuracy")
        base = [r for r in mine if r["method"] == "base model"]
        if base:
            ax.axvline(base[0]["reward"], color="gray", ls="--", lw=1, label="base model")
        ax.set_yticks(y, [r["method"] for r in mine], fontsize=8)
        ax.set_xlim(0, min(1.0, max(1e-3, float(ci[:, 1].max())) * 1.15))
        ax.set_xlabel("mean over the test prompts")
        ax.set_title(task)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.12 - 1.2 / (1 + most)),
                  ncol=3, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return path


def run_experiment(cfg: dict, reproduce: str) -> dict:
    from .session import Session
    results_dir = cfg["results_dir"]
    os.makedirs(results_dir, exist_ok=True)
    name = cfg["experiment_name"]
    all_rows, all_analysis, summaries = [], [], []
    t0 = time.time()
    for task in cfg["tasks"]:
        log.info("experiment: task %s", task)
        folder = os.path.splitext(os.path.basename(task))[0]  # a name, or a task file's stem
        s = Session(dict(cfg, task=task, output_dir=os.path.join(cfg["output_dir"], folder)))
        rows, analysis, summary, consolidations = run_task(s)
        from ..outputs import write_json_atomic
        os.makedirs(os.path.join(results_dir, name), exist_ok=True)
        for procedure, record in consolidations.items():
            # the consolidated models of the table, as seeds and coefficients (`corp rebuild`)
            write_json_atomic(os.path.join(results_dir, name, f"{folder}-{procedure}.json"),
                              record)
        all_rows += rows
        summaries.append(summary)
        for row in analysis:
            row.name = f"{s.task.name}: {row.name}"
        all_analysis += analysis
        _write(dict(cfg, reproduce=reproduce), name, results_dir, all_rows, all_analysis, summaries, time.time() - t0)
    return {"rows": all_rows}


def _write(cfg, name, results_dir, rows, analysis, summaries, seconds) -> None:
    from ..method import analysis as split
    import platform
    import torch
    paired = paired_comparisons(rows)  # for the markdown and the JSON
    md = [f"# Experiment `{name}`", "",
          f"Reproduce: `{cfg['reproduce']}`", "",
          f"model: {cfg['model']}; tasks: {', '.join(s['task'] for s in summaries)}; "
          f"N = {cfg['population']} (RandOpt), N_corp = {summaries[0]['n_corp']}, "
          f"K = {cfg['top_k']}, sigmas = {cfg['sigmas']}; machine: {platform.machine()}, "
          f"{torch.get_num_threads()} threads, {cfg['device']}; this invocation's wall-clock "
          f"{seconds / 60:.1f} min (steps an earlier invocation finished are reused, not "
          "rerun; each row's own cost is in its columns).", "",
          "Train / val / test prompts per task: "
          + ", ".join(f"{s['task']} {s['splits']}" for s in summaries) + ".", "",
          table(rows), "",
          "## Paired comparisons on the same test prompts", "",
          "Mean reward difference with its 95% interval; \"detectable\" is the true difference "
          "a two-sided 5% test finds with 80% power at this n and this spread of paired "
          "differences, (1.96 + 0.84) SE. An interval spanning 0 beside a detectable 0.05 says a "
          "difference under about 5 points would go unseen here, not that there is none.", "",
          paired_table(paired), "",
          "Thicket density (share of members at or above the base model's train reward):", ""]
    for s in summaries:
        md.append(f"- {s['task']}: {s['share_at_or_above_base']:.2f} (base train reward "
                  f"{s['base_train_reward']:.3f}, best member {s['best_train_reward']:.3f})")
    md += ["", "CoRP decisions (each gate's gain beside the gain it could have detected; the full "
           f"record, with the update as seeds and coefficients, is `{name}/<task>-<procedure>"
           ".json` beside this file):", ""]
    for s in summaries:
        for procedure, lines in s.get("corp_decisions", {}).items():
            md += [f"{s['task']}, {procedure}:", *lines, ""]
    md += ["Rebuild any consolidated model of the table from its record and score it on the "
           "test split:", "", "```",
           f"corp rebuild --update {results_dir}/{name}/<task>-<procedure>.json "
           "--output-dir runs/rebuilt", "```", ""]
    md += ["",
           "", "## Split-half analysis of the full populations", "",
           split.table(analysis), "", f"![results]({name}.png)", "",
           f"![split-half]({name}-split-half.png)", ""]
    from ..outputs import write_atomic
    write_atomic(os.path.join(results_dir, f"{name}.md"), "\n".join(md))
    write_atomic(os.path.join(results_dir, f"{name}.json"), json.dumps(
        {"rows": rows, "paired": paired, "summaries": summaries,
         "analysis": [r.to_json() for r in analysis]}, indent=2, default=str))
    figure(rows, os.path.join(results_dir, f"{name}.png"))
    split.figure(analysis, os.path.join(results_dir, f"{name}-split-half.png"))
