"""Tasks (prompts and rewards) and the sandbox that runs generated code.

- base: Example, GeneratedTask, AdditionTask (the built-in tiny model's task), last_integer
- arithmetic: word problems and countdown; coding: small Python functions, scored in sandbox;
  writing: constrained very short stories
- registry: load_task(name or path.py)
"""

from .base import AdditionTask, Example, GeneratedTask, last_integer
from .registry import BUILTIN_TASKS, load_task

__all__ = ["AdditionTask", "BUILTIN_TASKS", "Example", "GeneratedTask", "last_integer",
           "load_task"]
