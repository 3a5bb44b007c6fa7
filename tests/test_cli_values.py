"""Every bad `corp` option value, flag or YAML, is one clear line and exit status 2: never a
traceback, never a value silently ignored."""

import contextlib
import io
import os
import re
import subprocess
import sys

import pytest
import torch

from corp.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA = torch.cuda.is_available()


def run_corp(argv: list[str]) -> tuple[int, str]:
    """`corp ARGV` as the program runs it (argv read from the command line): exit status and
    stderr."""
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(sys, "argv", ["corp", *argv])
        try:
            code = main()
        except SystemExit as e:
            code = e.code
    return code, err.getvalue()


def _yaml(tmp_path, text: str) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return str(path)


# (case id, arguments, what the message must say); {tmp} is the test's folder, {yaml} a YAML file
# holding the case's text.
CASES = [
    ("population-0", ["search", "--population", "0"],
     "--population must be an integer >= 1, got 0"),
    ("population-0-top-k-0", ["search", "--population", "0", "--top-k", "0"],
     "--population must be an integer >= 1, got 0"),
    ("batch-size-0", ["eval", "--batch-size", "0"], "--batch-size must be an integer >= 1, got 0"),
    ("population-batch-0", ["ensemble", "--population-batch", "0"],
     "--population-batch must be an integer >= 1"),
    ("top-k-0", ["ensemble", "--top-k", "0"], "--top-k must be an integer >= 1"),
    ("top-k-above-n", ["search", "--population", "4", "--top-k", "9"],
     r"--top-k 9 exceeds --population 4 \(K <= N\)"),
    ("max-rank-0", ["consolidate", "--max-rank", "0"], "--max-rank must be an integer >= 1"),
    ("energy-fraction", ["consolidate", "--energy-fraction", "2"],
     r"--energy-fraction must be a number in \(0, 1\], got 2.0"),
    ("stage2-members-0", ["consolidate", "--stage2-members", "0"],
     "--stage2-members must be an integer >= 1"),
    ("seed", ["consolidate", "--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("sigma-0", ["search", "--sigmas", "0.01", "0"], "sigmas must be a non-empty list of finite"),
    ("negative-beta", ["consolidate", "--streaming", "--stage1", "0.5", "-1", "1"],
     "--stage1: the temperature BETA must be >= 0, got -1.0"),
    ("quantile", ["consolidate", "--streaming", "--stage1", "1.5", "1", "1"],
     r"--stage1: the quantile Q must be in \[0, 1\], got 1.5"),
    ("max-memory", ["consolidate", "--streaming", "--max-memory", "lots"],
     "--max-memory must be a memory size such as 2GiB or 512MB, got 'lots'"),
    ("log-level", ["search", "--log-level", "loud"], "--log-level must be one of DEBUG, INFO"),
    ("device-bogus", ["eval", "--device", "gpu0"], r"--device: 'gpu0' is not a device"),
    ("device-mps", ["eval", "--device", "mps"], "--device: corp runs on cpu or cuda, not mps"),
    ("unknown-model", ["eval", "--model", "builtin:gpt5"], "unknown built-in model 'builtin:gpt5'"),
    ("model-missing", ["eval", "--model", "{tmp}/none"],
     "--model '.*/none' is not a folder \\(corp never downloads models"),
    ("checkpoint-missing", ["eval", "--checkpoint", "{tmp}/none"],
     "--checkpoint '.*/none' is not a folder"),
    ("splits-too-many", ["search", "--task", "code", "--splits", "64", "64", "64"],
     r"--splits \[64, 64, 64\]: task 'code' has 104 distinct examples, 192 requested"),
    ("unknown-task", ["search", "--task", "algebra"], "unknown task 'algebra'; built-in tasks are"),
    ("task-file-missing", ["search", "--task", "{tmp}/none.py"], "task file '.*none.py' does not "),
    ("output-dir-file", ["search", "--output-dir", "{tmp}/a-file"],
     "--output-dir '.*a-file' is a file, not a folder"),
    ("output-dir-under-file", ["search", "--output-dir", "{tmp}/a-file/run"],
     "--output-dir '.*a-file/run' cannot be created: '.*a-file' is a file"),
    ("config-missing", ["search", "--config", "{tmp}/none.yaml"],
     "--config .*none.yaml: cannot read it \\(No such file or directory\\)"),
]
YAML_CASES = [
    ("unknown-key", "populaton: 4\n",
     r"unknown keys in .*c.yaml: \['populaton'\]; valid keys: adapter, .* population, "),
    ("wrong-type", "batch_size: lots\n",
     "batch_size in .*c.yaml must be an integer >= 1, got 'lots'"),
    ("bool-as-int", "population: true\n", "population in .*c.yaml must be an integer >= 1"),
    ("string-as-bool", "save_exact: 'no'\n", "save_exact in .*c.yaml must be true or false"),
    ("not-a-mapping", "- 1\n", "must be a mapping of option names to values, got a list"),
    ("syntax", "population: [\n", "is not valid YAML: while parsing"),
    ("sigmas-scalar", "sigmas: 0.01\n", "sigmas must be a non-empty list"),
    ("negative-beta", "corp_config: {betas: [1.0, -2.0]}\n",
     r"corp_config in .*c.yaml: betas must be a non-empty list of numbers >= 0"),
    ("corp-config-key", "corp_config: {betaz: [1.0]}\n",
     r"unknown keys \['betaz'\] in corp_config in .*c.yaml; valid keys: alpha_units, alphas"),
    ("corp-config-type", "corp_config: {stage2_rank: 2.5}\n",
     "stage2_rank must be an integer > 0, got 2.5"),
    ("stage1-length", "stage1: [0.5, 1.0]\n", "stage1 in .*c.yaml must be three numbers"),
    ("procedure", "procedure: paper\n", "procedure in .*c.yaml must be one of gated, released"),
    ("corp-config-procedure", "corp_config: {procedure: paper}\n",
     "procedure must be one of gated, released, got 'paper'"),
    ("splits-short", "splits: [64, 200]\n",
     "splits in .*c.yaml must be three integers >= 1 \\(train, val, test prompts\\)"),
    ("splits-per-task", "splits: {math: [64, 0, 200]}\n", "splits in .*c.yaml must be three"),
    ("procedures", "procedures: [gated, paper]\n",
     "procedures in .*c.yaml must be a list of distinct procedures from gated, released"),
    ("procedures-twice", "procedures: [gated, gated]\n", "procedures in .*c.yaml must be"),
    ("corp-configs-procedure", "corp_configs: {paper: {betas: [1.0]}}\n",
     "corp_configs in .*c.yaml must be a mapping from procedures"),
    ("corp-configs-value", "corp_configs: {released: {betas: [-1.0]}}\n",
     "corp_configs in .*c.yaml: released: betas must be a non-empty list of numbers >= 0"),
    ("corp-population", "population: 8\ntop_k: 2\ncorp_population: 9\n",
     "corp_population in .*c.yaml 9 exceeds population in .*c.yaml 8"),
]


@pytest.mark.parametrize("args,message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_a_bad_flag_is_one_line_and_status_2(tmp_path, args, message):
    (tmp_path / "a-file").write_text("")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--output-dir" not in args:
        args += ["--output-dir", str(tmp_path / "run")]
    code, err = run_corp(args)
    assert code == 2, err
    assert err.startswith("corp: error: ") and err.count("\n") == 1, err
    assert re.search(message, err), err
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.parametrize("text,message", [c[1:] for c in YAML_CASES],
                         ids=[c[0] for c in YAML_CASES])
def test_a_bad_yaml_value_names_the_key_and_the_file(tmp_path, text, message):
    code, err = run_corp(["consolidate", "--config", _yaml(tmp_path, text), "--output-dir",
                          str(tmp_path / "run")])
    assert code == 2 and re.search(message, err), err
    assert err.startswith("corp: error: ") and err.count("\n") == 1, err


def test_a_task_file_that_raises_names_the_file_and_the_exception(tmp_path):
    task = tmp_path / "my_task.py"
    task.write_text("import math\nTASK = math.sqrt(-1)\n")
    code, err = run_corp(["search", "--task", str(task), "--output-dir", str(tmp_path / "run")])
    assert code == 2, err
    assert err == (f"corp: error: task '{task}' could not be loaded: ValueError: math domain "
                   f"error\n")


@pytest.mark.skipif(CUDA, reason="CUDA is available here: --device cuda is honoured")
@pytest.mark.parametrize("command", [["eval"], ["consolidate", "--streaming"]])
def test_device_cuda_without_cuda_is_refused(tmp_path, command):
    code, err = run_corp([*command, "--device", "cuda", "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "--device cuda: CUDA is not available here" in err, err


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_device_cuda_is_honoured_for_the_builtin_model(tmp_path):
    from corp.cli.config import DEFAULTS
    from corp.cli.session import Session
    s = Session(dict(DEFAULTS, output_dir=str(tmp_path), device="cuda", builtin_steps=10,
                     sigmas=[0.01]))
    assert {p.device.type for p in s.model.parameters()} == {"cuda"}
    scores = s.scores("test")  # generation runs there too
    assert len(scores.rewards) == len(s.splits["test"])


def test_dtype_is_honoured_for_the_builtin_model(tmp_path):
    from corp.cli.config import DEFAULTS
    from corp.cli.session import Session
    s = Session(dict(DEFAULTS, output_dir=str(tmp_path), dtype="bfloat16", builtin_steps=10,
                     sigmas=[0.01]))
    assert {p.dtype for p in s.model.parameters()} == {torch.bfloat16}


def test_the_program_prints_one_line_and_no_traceback():
    result = subprocess.run([sys.executable, "-m", "corp", "search", "--population", "0"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr == "corp: error: --population must be an integer >= 1, got 0\n"
