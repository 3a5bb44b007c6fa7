"""The command line (`corp`, `python -m corp`), the experiment and the gradient baseline: the top
layer, importing everything below it; nothing imports it back."""

from .main import main

__all__ = ["main"]
