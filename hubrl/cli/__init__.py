"""hubrl's command line: one module per command, run three equivalent ways.

=========  ==================  ==============================  ==============================
command    entry point         ``python -m hubrl <command>``   script in a clone
=========  ==================  ==============================  ==============================
pretrain   ``hubrl-pretrain``  ``python -m hubrl pretrain``    ``scripts/pretrain_sources.py``
transfer   ``hubrl-transfer``  ``python -m hubrl transfer``    ``scripts/transfer.py``
rank       ``hubrl-rank``      ``python -m hubrl rank``        ``scripts/rank_hub.py``
bench      ``hubrl-bench``     ``python -m hubrl bench``       ``scripts/benchmark.py``
speed      ``hubrl-speed``     ``python -m hubrl speed``       ``scripts/benchmark_speed.py``
enjoy      ``hubrl-enjoy``     ``python -m hubrl enjoy``       ``scripts/enjoy.py``
=========  ==================  ==============================  ==============================

Each module ``hubrl.cli.<command>`` has ``main(argv=None, prog=None) -> int`` (``prog``: how the
command was started, for its usage line and the hints it prints) and ``cli()``, the entry point.
"""

from __future__ import annotations

import importlib
import os
import shlex
import sys
from typing import Callable, NoReturn, Sequence

__all__ = ["COMMANDS", "command_main", "main", "run", "run_script"]

COMMANDS: dict[str, str] = {  # command -> what it does (its module is hubrl.cli.<command>)
    "pretrain": "pretrain the hub's source experts",
    "transfer": "fine-tune on a target game by transfer from a hub (or a baseline)",
    "rank": "rank a hub's experts for a target game before training",
    "bench": "run a benchmark grid of transfer trials, or report on one",
    "speed": "measure throughput on this machine (envs, training, methods)",
    "enjoy": "watch an agent play, record a video",
}


def command_main(name: str) -> Callable[..., int]:
    """``main`` of the command ``name`` (imported on demand: ``--help`` of one command loads only it)."""
    if name not in COMMANDS:
        from hubrl.errors import UsageError

        raise UsageError(f"unknown command {name!r}: choose one of {', '.join(COMMANDS)} (see python -m hubrl --help)")
    return importlib.import_module(f"hubrl.cli.{name}").main


def run(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> NoReturn:
    """Run the command ``name`` behind the error boundary (:func:`hubrl.cli.common.run_guarded`)
    and exit with its code."""
    from hubrl.cli.common import run_guarded

    sys.exit(run_guarded(lambda: command_main(name)(argv, prog=prog)))


def run_script(name: str, path: str) -> NoReturn:
    """What ``scripts/<file>.py`` runs: the command ``name``, shown as it was typed
    (``python scripts/<file>.py``) in its usage line and the commands it prints."""
    typed = sys.argv[0] if sys.argv and os.path.realpath(sys.argv[0]) == os.path.realpath(path) else os.path.relpath(path)
    run(name, prog=f"python {shlex.quote(typed)}")


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {what}" for name, what in COMMANDS.items()]
    return ("usage: python -m hubrl <command> [options]   (or the entry point hubrl-<command>)\n\n"
            "commands:\n" + "\n".join(lines) + "\n\npython -m hubrl <command> --help: the options of one command.")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m hubrl <command> ...``: dispatch to the command's ``main``."""
    from hubrl.cli.common import run_guarded

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    if argv[0] == "--version":
        from hubrl import __version__

        print(f"hubrl {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    return run_guarded(lambda: command_main(name)(rest, prog=f"python -m hubrl {name}"))
