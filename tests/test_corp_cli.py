"""`corp` end to end on the built-in tiny model, small enough for CI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from corp.cli import main

SMALL = ["--population", "12", "--top-k", "3", "--builtin-steps", "60", "--stage2-rounds", "1",
         "--stage2-members", "4", "--max-rank", "4", "--no-progress", "--log-level", "WARNING"]


def test_corp_run_writes_every_artifact(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "--output-dir", str(out), *SMALL]) == 0
    printed = capsys.readouterr().out
    for name in ("population.jsonl", "consolidation.json", "ensemble.json", "results.md",
                 "results.json", "config-run.yaml", "base-model/config.json"):
        assert (out / name).exists(), name
    assert "| base model |" in printed and "top-3 vote" in printed and "CoRP" in printed
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert [r["forward_passes_per_example"] for r in rows[:3]] == [1, 1, 3]
    assert len((out / "population.jsonl").read_text().splitlines()) == 13
    # A rerun resumes: nothing left to search, the log is unchanged.
    before = (out / "population.jsonl").read_text()
    assert main(["search", "--output-dir", str(out), *SMALL]) == 0
    assert (out / "population.jsonl").read_text() == before
    # analyze and eval on the same directory
    assert main(["analyze", "--output-dir", str(out), *SMALL]) == 0
    assert (out / "analysis.png").exists() and (out / "analysis.md").exists()
    assert main(["eval", "--output-dir", str(out), *SMALL]) == 0
    assert json.loads((out / "eval.json").read_text())["method"] == "base"


def test_config_file_and_bad_options(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("population: 4\ntop_k: 9\n")
    with pytest.raises(SystemExit, match="K <= N"):
        main(["search", "--config", str(cfg), "--output-dir", str(tmp_path / "o")])
    cfg.write_text("populaton: 4\n")
    with pytest.raises(SystemExit, match="unknown keys"):
        main(["search", "--config", str(cfg), "--output-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="sigmas"):
        main(["search", "--sigmas", "0", "--output-dir", str(tmp_path / "o")])
    with pytest.raises(SystemExit, match="run `corp search` first"):
        main(["ensemble", "--output-dir", str(tmp_path / "empty"), *SMALL])


def test_task_options_reach_the_task_and_bad_ones_name_the_key(tmp_path):
    def train_operands(out):
        with open(out / "population.jsonl") as f:
            header = json.loads(f.readline())["header"]
        return [int(x) for prompt in header["train"] for x in prompt.rstrip("=").split("+")]

    tiny = [*SMALL, "--population", "2", "--top-k", "1"]
    cfg = tmp_path / "c.yaml"
    cfg.write_text("task_options: {add: {max_operand: 20}}\n")
    assert main(["search", "--config", str(cfg), "--output-dir", str(tmp_path / "a"), *tiny]) == 0
    assert main(["search", "--output-dir", str(tmp_path / "b"), *tiny]) == 0
    assert max(train_operands(tmp_path / "a")) < 20 <= max(train_operands(tmp_path / "b"))
    cfg.write_text("task_options: {add: {max_operand: 20, colour: red}}\n")
    with pytest.raises(SystemExit, match="task_options in .*add: .*colour"):
        main(["search", "--config", str(cfg), "--output-dir", str(tmp_path / "c"), *tiny])
    cfg.write_text("task_options: [add]\n")
    with pytest.raises(SystemExit, match="task_options in .*mapping from task names"):
        main(["search", "--config", str(cfg), "--output-dir", str(tmp_path / "c"), *tiny])
    # refused before anything runs: a task name that is no task (a typo), prompt counts, a value the task
    # cannot use (3 operands give 9 sums, fewer than the splits need)
    for text, message in [("task_options: {ad: {max_operand: 20}}", "'ad' is not a built-in task"),
                          ("task_options: {add: {n_train: 4}}", "with splits"),
                          ("task_options: {add: {max_operand: 3}}",
                           "task_options for 'add' .*distinct examples")]:
        cfg.write_text(text + "\n")
        with pytest.raises(SystemExit, match=message):
            main(["search", "--config", str(cfg), "--output-dir", str(tmp_path / "c"), *tiny])
    assert not (tmp_path / "c").exists()


def test_an_option_added_later_keeps_old_steps_reusable(tmp_path):
    """Steps fingerprinted before `task_options` existed are reused while it is unset; setting
    it recomputes them."""
    from corp.cli.config import DEFAULTS
    from corp.cli.experiment import Steps
    old = {k: v for k, v in DEFAULTS.items() if k != "task_options"}
    calls = []
    Steps(str(tmp_path), old).get("s", lambda: calls.append(1) or 1)
    assert Steps(str(tmp_path), dict(DEFAULTS)).get("s", lambda: calls.append(2) or 2) == 1
    changed = dict(DEFAULTS, task_options={"code": {"max_k": 25}})
    assert Steps(str(tmp_path), changed).get("s", lambda: calls.append(3) or 3) == 3
    assert calls == [1, 3]


def test_python_dash_m_corp_help():
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-m", "corp", "--help"], capture_output=True,
                            text=True, env=env, timeout=120)
    assert result.returncode == 0 and "consolidate" in result.stdout


def test_consolidate_runs_the_released_procedure_on_request(tmp_path):
    out = tmp_path / "run"
    assert main(["search", "--output-dir", str(out), *SMALL]) == 0
    small_grid = tmp_path / "grid.yaml"
    small_grid.write_text("corp_config: {quantiles: [0.5], betas: [1.0], alphas: [0.5, 1.0]}\n")
    assert main(["consolidate", "--output-dir", str(out), "--config", str(small_grid),
                 "--procedure", "released", *SMALL]) == 0
    result = json.loads((out / "consolidation.json").read_text())
    config = result["corp_config"]
    assert config["procedure"] == "released" and config["alpha_units"] == "raw"
    assert config["betas"] == [1.0] and config["stage2_members"] == 4  # overrides win
    stage1 = result["decisions"][0]
    assert stage1["stage"] == "stage1" and stage1["accepted"]  # committed without a gate
    assert "released procedure" in result["reason"]


def test_corp_experiment_reports_equal_budget_rows_and_gate_power(tmp_path, caplog):
    results = tmp_path / "results"
    config = tmp_path / "exp.yaml"
    config.write_text("gradient_steps: 1\ngradient_samples: 1\nprocedures: [gated, released]\n"
                      "corp_configs: {released: {quantiles: [0.5], betas: [1.0], "
                      "alphas: [0.5, 1.0]}}\n")
    args = ["experiment", "--output-dir", str(tmp_path / "exp"), "--results-dir", str(results),
            "--experiment-name", "tiny", "--corp-population", "6", "--config", str(config),
            *SMALL]
    assert main(args) == 0
    md = (results / "tiny.md").read_text()
    for row in ("| base model |", "RandOpt best member (N=12) |", "RandOpt top-3 vote (N=12) |",
                "CoRP gated (N=6", "CoRP released (N=6) |",
                "RandOpt best member (N=6, CoRP's budget)",
                "RandOpt top-3 vote (N=6, CoRP's budget)", "corp rebuild --update"):
        assert row in md, row
    assert "detectable" in md and "- stage1:" in md  # every gate beside its power
    # exact and low-rank side by side, whether or not a rank was within the probe's tolerance
    assert "CoRP released (N=6) low-rank, rank" in md
    assert "add, gated:" in md and "add, released:" in md
    rows = json.loads((results / "tiny.json").read_text())["rows"]
    for procedure in ("gated", "released"):
        record = json.loads((results / "tiny" / f"add-{procedure}.json").read_text())
        assert record["procedure"] == procedure and record["rebuild"]["parameters"]
        assert record["corp_config"]["procedure"] == procedure
        if record["update"] != record["candidate"]:  # a gate refused the candidate: show it
            assert any(r["method"].startswith(f"CoRP {procedure}: best Stage-1 candidate")
                       for r in rows)
    # every row carries its per-prompt rewards, and the paired section compares them
    assert "## Paired comparisons on the same test prompts" in md
    paired = json.loads((results / "tiny.json").read_text())["paired"]
    by_method = {r["method"]: r for r in rows}
    best = by_method["RandOpt best member (N=12)"]
    assert len(best["rewards"]) > 1 and np.mean(best["rewards"]) == pytest.approx(best["reward"])
    for c in paired:
        a, b = by_method[c["method"]], by_method[c["against"]]
        assert c["diff"] == pytest.approx(np.mean(np.subtract(a["rewards"], b["rewards"])))
    assert {("CoRP released (N=6)", "RandOpt top-3 vote (N=6, CoRP's budget)"),
            ("CoRP released (N=6)", "base model")} <= {(c["method"], c["against"]) for c in paired}
    released = json.loads((results / "tiny" / "add-released.json").read_text())
    assert released["corp_config"]["betas"] == [1.0]  # corp_configs reach their procedure only
    assert json.loads((results / "tiny" / "add-gated.json").read_text()
                      )["corp_config"]["betas"] != [1.0]

    # A rerun reuses every finished step and reports the same rows.
    caplog.clear()
    with caplog.at_level("INFO", logger="corp"):
        assert main(args) == 0
    reused = [r.getMessage() for r in caplog.records if "done before" in r.getMessage()]
    assert any("corp-released " in m for m in reused) and any("randopt-test" in m for m in reused)
    assert any("step split-half " in m for m in reused)  # the analysis is not recomputed
    again = json.loads((results / "tiny.json").read_text())["rows"]
    assert [(r["method"], r["reward"]) for r in again] == [(r["method"], r["reward"])
                                                           for r in rows]
    # Another grid for one procedure recomputes that procedure's steps and nothing else.
    config.write_text(config.read_text().replace("alphas: [0.5, 1.0]", "alphas: [2.0]"))
    caplog.clear()
    with caplog.at_level("INFO", logger="corp"):
        assert main(args) == 0
    said = [r.getMessage() for r in caplog.records]
    assert any("step corp-gated done before" in m for m in said)
    assert any("step base-test done before" in m for m in said)
    assert any("step corp-released was done with other options" in m for m in said)
    assert json.loads((results / "tiny" / "add-released.json").read_text()
                      )["corp_config"]["alphas"] == [2.0]
    rows = json.loads((results / "tiny.json").read_text())["rows"]

    # The released procedure commits Stage 1 ungated, so its record has an update: rebuilding it
    # from seeds and coefficients scores what the table says the exact update scored.
    rebuilt = tmp_path / "rebuilt"
    # flags that would change the task or its test prompts do not reach the rebuild: the
    # record's (here: the task's default splits) decide them
    assert main(["rebuild", "--update", str(results / "tiny" / "add-released.json"),
                 "--output-dir", str(rebuilt), "--no-progress", "--log-level", "WARNING",
                 "--splits", "8", "8", "8"]) == 0
    out = json.loads((rebuilt / "rebuild.json").read_text())
    table_row = next(r for r in rows if r["method"] == "CoRP released (N=6)")
    assert out["test_reward"] == table_row["reward"]
    assert out["recorded"]["reward"] == table_row["reward"]


def test_rebuild_reproduces_the_exported_checkpoint(tmp_path):
    """`corp rebuild` from consolidation.json gives the merged checkpoint `corp consolidate`
    exported, logit for logit; a record whose parameters another model lacks is refused."""
    import torch
    from corp.models import load_model
    out = tmp_path / "run"
    assert main(["search", "--output-dir", str(out), *SMALL]) == 0
    grid = tmp_path / "grid.yaml"
    grid.write_text("corp_config: {quantiles: [0.5], betas: [1.0], alphas: [1.0]}\n")
    assert main(["consolidate", "--output-dir", str(out), "--config", str(grid), "--procedure",
                 "released", "--save-exact", *SMALL]) == 0
    rebuilt = tmp_path / "rebuilt"
    assert main(["rebuild", "--update", str(out / "consolidation.json"), "--output-dir",
                 str(rebuilt), "--no-progress", "--log-level", "WARNING"]) == 0
    exported = load_model(str(out / "merged-exact"))
    again = load_model(str(rebuilt / "merged-exact"))
    base = load_model(str(out / "base-model"), verify=False)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10]])
    with torch.no_grad():
        want, got = exported.model(ids).logits, again.model(ids).logits
        assert not torch.equal(want, base.model(ids).logits)  # the update changed the model
    assert torch.equal(got, want)
    record = json.loads((out / "consolidation.json").read_text())
    assert json.loads((rebuilt / "rebuild.json").read_text())["test_reward"] == \
        record["test_reward_exact"]
    record["rebuild"]["fingerprint"] = "0" * 16
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match="fingerprint"):
        main(["rebuild", "--update", str(forged), "--output-dir", str(tmp_path / "r2"),
              "--no-progress", "--log-level", "WARNING"])

def test_paired_comparisons_of_experiment_rows():
    """Every method against the base, every CoRP row against every RandOpt row, on the same
    prompts: the difference's sign, its normal 95% interval and the 80%-power detectable
    difference (1.96 + 0.8416) SE, by hand."""
    from corp.cli.experiment import paired_comparisons, paired_table

    def row(method, rewards, task="t"):
        return {"task": task, "method": method, "rewards": rewards}
    rows = [row("base model", [0, 0, 1, 1]), row("RandOpt best member (N=4)", [1, 0, 1, 1]),
            row("CoRP gated (N=4), gate kept the base", [0, 0, 1, 1]),
            row("CoRP released (N=4)", [1, 1, 1, 0]), row("base model", [1], task="u")]
    got = {(c["method"], c["against"]): c for c in paired_comparisons(rows)}
    assert set(got) == {
        ("RandOpt best member (N=4)", "base model"),
        ("CoRP gated (N=4), gate kept the base", "base model"),
        ("CoRP released (N=4)", "base model"),
        ("CoRP gated (N=4), gate kept the base", "RandOpt best member (N=4)"),
        ("CoRP released (N=4)", "RandOpt best member (N=4)")}
    best = got[("RandOpt best member (N=4)", "base model")]
    # differences [1, 0, 0, 0]: mean 0.25, SD 0.5, SE 0.25
    assert best["diff"] == pytest.approx(0.25) and best["n"] == 4
    assert best["ci95"] == pytest.approx([0.25 - 1.96 * 0.25, 0.25 + 1.96 * 0.25])
    assert best["mde80"] == pytest.approx((1.96 + 0.8416212) * 0.25)
    released = got[("CoRP released (N=4)", "RandOpt best member (N=4)")]
    # differences [0, 1, 0, -1]: mean 0, SD sqrt(2/3)
    assert released["diff"] == pytest.approx(0.0)
    assert released["mde80"] == pytest.approx((1.96 + 0.8416212) * (2 / 3) ** 0.5 / 2)
    assert got[("CoRP released (N=4)", "base model")]["diff"] == pytest.approx(0.25)
    table = paired_table(paired_comparisons(rows))
    assert "| t | CoRP gated (N=4), gate kept the base | base model | +0.000 (identical on " \
           "every prompt) | - | 4 |" in table
    assert "| t | RandOpt best member (N=4) | base model | +0.250 [-0.240, +0.740] | 0.700 | 4 |" \
        in table
