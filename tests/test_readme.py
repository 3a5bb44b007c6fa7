"""The README's Python example runs as written."""

import os
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(heading: str) -> str:
    text = README.read_text()
    section = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_python_api_example_runs(tmp_path, capsys):
    code = _python_block("## The method from Python")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # the example writes under runs/
    try:
        namespace = {}
        exec(compile(code, "README.md", "exec"), namespace)
    finally:
        os.chdir(cwd)
    assert len(namespace["records"]) == 32
    assert (tmp_path / "runs" / "api" / "population.jsonl").exists()
    assert 0.0 <= namespace["vote"].reward <= 1.0
    assert namespace["result"].reason
    assert "top-4 vote: test reward" in capsys.readouterr().out
