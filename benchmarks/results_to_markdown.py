"""Render a results JSON written by benchmarks.run as markdown (the committed .md beside it).

    python -m benchmarks.results_to_markdown benchmarks/results/<device>.json
"""

import json
import sys
from pathlib import Path

from .run import Row, to_markdown


def render(path: Path) -> str:
    data = json.loads(path.read_text())
    rows = [Row(**r) for r in data["rows"]]
    lines = [f"# corp-kernels benchmarks: {data['device']} ({data['dtype']}, torch {data['torch']}, "
             f"{data['timestamp']})", "", to_markdown(rows), "",
             "baseline / ours > 1 means ours is faster. Where an interval follows, the ratio is "
             "the median of per-round ratios (both calls timed in the same round) and [lo, hi] "
             "its 95% bootstrap interval: an interval holding 1 is a tie. The ms columns are "
             "each call's own median. Baselines:", ""]
    lines += [f"- {name}: {what}" for name, what in data["baselines"].items()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        path = Path(arg)
        path.with_suffix(".md").write_text(render(path))
        print(f"wrote {path.with_suffix('.md')}")
