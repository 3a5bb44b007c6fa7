"""Tasks by name: the built-in families, or a user's .py file that defines TASK.

Add a task by writing one file that defines `TASK = MyTask(...)` (see corp.tasks.base) and pass its
path as `--task path/to/file.py`. This module imports every family; none imports it back.
"""

from __future__ import annotations

import importlib.util

from .arithmetic import CountdownTask, WordProblemTask
from .base import AdditionTask
from .coding import CodeTask
from .writing import ConstrainedWritingTask

BUILTIN_TASKS = {"add": AdditionTask, "math": WordProblemTask, "countdown": CountdownTask,
                 "code": CodeTask, "writing": ConstrainedWritingTask}


def load_task(spec: str, **kwargs):
    """A built-in task by name, or the TASK object of a Python file."""
    if spec.endswith(".py"):
        module_spec = importlib.util.spec_from_file_location("corp_user_task", spec)
        if module_spec is None:
            raise ValueError(f"cannot load task file {spec!r}")
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        if not hasattr(module, "TASK"):
            raise ValueError(f"task file {spec!r} must define TASK = <task object>")
        return module.TASK
    if spec not in BUILTIN_TASKS:
        raise ValueError(f"unknown task {spec!r}; built-in tasks: {sorted(BUILTIN_TASKS)}, or a "
                         f"path to a .py file defining TASK")
    return BUILTIN_TASKS[spec](**kwargs)
