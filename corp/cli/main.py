"""`corp` command line: search, consolidate, ensemble, eval, analyze, run (all of them) and
experiment.

Options come from defaults, then a YAML file (--config; keys are the option names with
underscores), then flags. Every command writes its resolved config and its results into
--output-dir, so any number in a results table can be traced to the run that made it.

A bad option value is `corp: error: ...` and exit status 2; a command that fails on its input
(a damaged log, a folder of another run) is `corp: error: ...` and exit status 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

import yaml

from ..outputs import write_atomic
from .commands import COMMANDS, HELP, cmd_consolidate_streaming, cmd_experiment, cmd_rebuild
from .config import add_options, resolve_config
from .session import Session
from .values import UsageError

log = logging.getLogger("corp")


def main(argv: list[str] | None = None) -> int:
    """The `corp` program. Run as a program (argv None), errors are one line on stderr and an exit
    status; called with an argv list (from Python, tests), errors other than a bad option
    (UsageError, a SystemExit) propagate as exceptions."""
    try:
        return _main(argv)
    except UsageError as e:
        print(f"corp: error: {e}", file=sys.stderr)
        raise
    except KeyboardInterrupt:
        if argv is not None:
            raise
        print("corp: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except (ValueError, OSError) as e:  # input the command cannot use, named by the message
        if argv is not None:
            raise
        log.debug("corp: error", exc_info=True)
        print(f"corp: error: {e} (--log-level DEBUG shows where)", file=sys.stderr)
        raise SystemExit(1) from None


def _main(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="corp", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in HELP:
        add_options(sub.add_parser(name, help=HELP[name], description=HELP[name]))
    args = parser.parse_args(argv)
    cfg = resolve_config(args)
    logging.basicConfig(level=getattr(logging, str(cfg["log_level"]).upper()),
                        format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S")
    from ..scale.distributed import init_from_env
    streaming = args.command == "consolidate" and cfg["streaming"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not (args.command == "search" or
                                                           streaming):
        raise SystemExit(f"corp: `{args.command}` does not run distributed; under torchrun use "
                         f"`corp search` or `corp consolidate --streaming`")
    rank, world = init_from_env(cfg["device"])
    cfg["_rank"], cfg["_world"] = rank, world
    if streaming:
        cmd_consolidate_streaming(cfg)
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
        return 0
    if args.command == "experiment":  # one Session per task, each with its own output folder
        os.makedirs(cfg["output_dir"], exist_ok=True)
        write_atomic(os.path.join(cfg["output_dir"], "config-experiment.yaml"),
                     yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")},
                                    sort_keys=True))
        cmd_experiment(cfg, args.config)
        return 0
    if args.command == "rebuild":  # its Session is built from the record it rebuilds
        cmd_rebuild(cfg)
        return 0
    if world > 1 and rank != 0:  # rank 0 builds (and caches) a built-in model first
        import torch.distributed as dist
        dist.barrier()
    session = Session(cfg)
    if world > 1 and rank == 0:
        import torch.distributed as dist
        dist.barrier()
    if rank == 0:
        write_atomic(session.path(f"config-{args.command}.yaml"),
                     yaml.safe_dump({k: v for k, v in cfg.items() if not k.startswith("_")},
                                    sort_keys=True))
    COMMANDS[args.command](session)
    if world > 1:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0
