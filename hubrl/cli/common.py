"""Shared command-line plumbing: flags every command has, checked values, and one error boundary.

Every command runs its ``main`` through :func:`main_guard`: a mistake the user can fix (a bad
flag, a broken hub or checkpoint, a full or read-only disk, bad YAML) ends as one line
``error: ...`` on stderr with exit code 2; anything else is a bug and keeps its traceback.
Numeric flags are checked when parsed (finite, in range), so ``--timesteps inf`` or
``--noise nan`` never reach the library.
"""

from __future__ import annotations

import argparse
import errno
import math
import sys
from typing import Any, Callable, Sequence

from hubrl.errors import HubrlError, UsageError
from hubrl.units import MAX_STEPS, parse_steps

MAX_SEED = 2**32 - 1  # numpy's seed range


def _user_errors() -> tuple[type[BaseException], ...]:
    """What the boundary reports as one line: hubrl's errors, file-system errors, YAML errors."""
    import yaml

    return (HubrlError, OSError, yaml.YAMLError)


# ----------------------------------------------------------------------------- parsing


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose mistakes end as one ``error:`` line (exit code 2), like
    every other user error, instead of the usage block plus a message.

    ``add_argument(..., aliases=("--old",))`` keeps an old spelling of a flag working, hidden from
    ``--help``: it is read as the flag's own name, with a one-line deprecation warning on stderr
    (``--budget 1M`` is ``--timesteps 1M``). The vocabulary is in :data:`FLAG_VOCABULARY`.

    Abbreviated flags (``--time 1M`` for ``--timesteps``) are refused: a saved command line must not
    change meaning when a later release adds a flag with the same prefix.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)
        self.deprecated_aliases: dict[str, str] = {}  # old spelling -> the flag's name

    def add_argument(self, *name_or_flags: str, aliases: Sequence[str] = (), **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*name_or_flags, **kwargs)
        for alias in aliases:
            if alias in self._option_string_actions or alias in self.deprecated_aliases:
                raise ValueError(f"{alias} already names a flag of {self.prog}")
            self.deprecated_aliases[alias] = action.option_strings[0]
        return action

    def parse_known_args(self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None):
        return super().parse_known_args(self._renamed(sys.argv[1:] if args is None else list(args)), namespace)

    def _renamed(self, args: list[str]) -> list[str]:
        """``args`` with each deprecated spelling (``--budget``, ``--budget=1M``) replaced by its
        flag, up to a ``--`` (after it everything is a value)."""
        renamed = []
        for i, arg in enumerate(args):
            if arg == "--":
                return renamed + args[i:]
            flag, eq, value = arg.partition("=")
            new = self.deprecated_aliases.get(flag)
            if new is not None:
                print(f"warning: {flag} is deprecated: use {new} (same meaning)", file=sys.stderr)
                arg = f"{new}{eq}{value}"
            renamed.append(arg)
        return renamed

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(f"{message}{self._rl_zoo_hints(message)} (see {self.prog} --help)")

    def _rl_zoo_hints(self, message: str) -> str:
        """For RL Zoo flags among unrecognized arguments, what this command takes instead
        (:data:`RL_ZOO_FLAGS`): ``-n 1M`` is ``--timesteps 1M`` here."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = set(self._option_string_actions)  # a subcommand's flags too: the top parser reports its leftovers
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    known |= set(sub._option_string_actions)
        hints = []
        for token in message.split(":", 1)[1].split():
            flag = token.partition("=")[0]
            if flag in RL_ZOO_FLAGS and flag not in known:
                target, why = RL_ZOO_FLAGS[flag]
                if target is None or target in known:
                    hints.append(f"RL Zoo's {flag}: {why}")
        return f"; {'; '.join(dict.fromkeys(hints))}" if hints else ""


#: RL Zoo's train.py / enjoy.py flags a Zoo user types -> (the flag of ours it needs, or None, and what to
#: use here). A hint is given only where the command has that flag.
RL_ZOO_FLAGS: dict[str, tuple[str | None, str]] = {
    "-n": ("--timesteps", "use --timesteps (agent steps, e.g. 1M)"),
    "--n-timesteps": ("--timesteps", "use --timesteps (agent steps, e.g. 1M)"),
    "-tb": ("--tensorboard-log", "use --tensorboard-log DIR"),
    "-f": ("--out", "use --out, the run folder itself"),
    "--log-folder": ("--out", "use --out, the run folder itself"),
    "-P": ("--no-progress-bar", "the progress bar is on by default (--no-progress-bar turns it off)"),
    "--progress": ("--no-progress-bar", "the progress bar is on by default (--no-progress-bar turns it off)"),
    "--save-freq": ("--checkpoint-freq", "use --checkpoint-freq (a resumable checkpoint.pt)"),
    "-i": ("--resume", "use --resume --out RUN to continue a run, --sources ZIP to transfer from one"),
    "--trained-agent": ("--resume", "use --resume --out RUN to continue a run, --sources ZIP to transfer from one"),
    "--stochastic": ("--deterministic", "actions are sampled by default (--deterministic for greedy ones)"),
    "-params": ("--hyperparams", "use --hyperparams FILE.yaml, a YAML file of KEY: VALUE lines (not KEY:VALUE pairs)"),
    "-conf": ("--hyperparams", "use --hyperparams FILE.yaml (its keys override the preset's; no env-id sections)"),
    "--conf-file": ("--hyperparams", "use --hyperparams FILE.yaml (its keys override the preset's; no env-id sections)"),
    "--num-threads": ("--threads", "use --threads N (torch threads per run)"),
    "--exp-id": (None, "give the run folder itself"),
    "--load-best": (None, "a run keeps its final model.zip; evaluations.json holds every evaluation"),
    "--no-render": (None, "nothing is rendered (--video records one)"),
}


# One flag name per concept across the commands; the old spellings still work (hidden, deprecated).
FLAG_VOCABULARY: dict[str, tuple[str, tuple[str, ...]]] = {  # concept -> (flag, deprecated aliases)
    "game(s)": ("--env", ("--games", "--game")),
    "agent steps a command runs (train, play, collect, measure)": ("--timesteps", ("--budget", "--steps", "--frames")),
    "select's random-policy steps (transfer)": ("--select-timesteps", ("--select-frames",)),
    "seed(s)": ("--seed", ("--seeds",)),
    "method(s)": ("--method", ("--methods",)),
}


class _UnsetList(list):
    """The not-given marker of an appending flag: argparse copies it before appending a value."""


def parse_given(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> tuple[argparse.Namespace, set[str]]:
    """Parse ``argv``; also return the destinations the user gave explicitly.

    A flag given with its default value still counts as given (``--timesteps 1M`` on a resumed
    100k run is a request, not a no-op), which comparing values with the defaults cannot tell.
    """
    # one marker per destination; an appending flag (--set) copies what it finds and appends, so its marker is a list
    unset = {a.dest: _UnsetList() if isinstance(a, (argparse._AppendAction, argparse._AppendConstAction)) else object()
             for a in parser._actions if a.dest != argparse.SUPPRESS}
    namespace = argparse.Namespace(**unset)
    parser.parse_args(argv, namespace=namespace)
    given = {dest for dest, value in vars(namespace).items() if value is not unset.get(dest)}
    for dest in given:
        if isinstance(getattr(namespace, dest), _UnsetList):  # the marker's copy with the values appended
            setattr(namespace, dest, list(getattr(namespace, dest)))
    for dest in set(vars(namespace)) - given:
        setattr(namespace, dest, parser.get_default(dest))
    return namespace, given


def command_prog(name: str, prog: str | None = None) -> str:
    """How the command ``name`` was started, for its usage line and the commands it prints:
    ``prog`` when the caller knows it (``hubrl-transfer``, ``python scripts/transfer.py``), else
    ``python -m hubrl <name>``, which works wherever hubrl imports."""
    return prog or f"python -m hubrl {name}"


def flag_names(parser: argparse.ArgumentParser) -> dict[str, str]:
    """Destination -> the flag that sets it (``repeat_action_probability`` -> ``--sticky-actions``)."""
    return {a.dest: a.option_strings[-1] for a in parser._actions if a.option_strings and a.dest != argparse.SUPPRESS}


def refuse_flags_not_read_by(parser: argparse.ArgumentParser, given: set[str], mode: str, reads: set[str]) -> None:
    """Refuse the flags given with the mode flag ``mode`` (a destination, e.g. ``plot``) that the mode
    does not read (``reads``), naming them: ``--plot --timesteps 1M`` would otherwise redraw the curve and
    silently ignore the budget. ``given`` holds the destinations given explicitly (:func:`parse_given`)."""
    flags = flag_names(parser)  # in the order of --help
    ignored = [flag for dest, flag in flags.items() if dest in given and dest not in reads and dest != mode]
    if ignored:
        read = ", ".join(flag for dest, flag in flags.items() if dest in reads) or "no other flag"
        parser.error(f"{flags[mode]} reads only {read}; it does not read {', '.join(ignored)}: "
                     f"drop {'it' if len(ignored) == 1 else 'them'}, or run without {flags[mode]}.")


def _number(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not a finite number)")
    return value


def _integer(value: float, text: str, low: int, high: int, what: str) -> int:
    if value != int(value):
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r} (not a whole number)")
    if value < low and low == 1:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    if not low <= value <= high:
        raise argparse.ArgumentTypeError(f"{text} is out of range: expected {what} from {low:,} to {high:,}")
    return int(value)


def path_text(text: str) -> str:
    """A file or folder argument: refused when empty (``--out "$UNSET"``), which would otherwise mean the
    default folder, or the current one, without a word."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty: give a path")
    return text


def positive_int(text: str) -> int:
    """A whole number >= 1 (``8``, ``1e3``); rejects inf, nan, fractions and overflow."""
    return _integer(_number(text, "a positive integer"), text, 1, MAX_STEPS, "a positive integer")


def non_negative_int(text: str) -> int:
    """A whole number >= 0 (``0``, ``8``, ``1e3``): a count whose 0 means none; rejects inf, nan, fractions and overflow."""
    return _integer(_number(text, "a whole number"), text, 0, MAX_STEPS, "a whole number")


def env_count(text: str) -> int:
    """A number of parallel games, 1 .. :data:`hubrl.envs.MAX_ENVS` (``--n-envs``)."""
    from hubrl.envs import MAX_ENVS

    return _integer(_number(text, "a number of parallel games"), text, 1, MAX_ENVS, "a number of parallel games")


def seed(text: str) -> int:
    """A random seed: a whole number in numpy's range 0 .. 2**32 - 1."""
    return _integer(_number(text, "a seed (a whole number)"), text, 0, MAX_SEED, "a seed")


def steps(text: str) -> int:
    """A number of agent steps: 10M / 500k / 2e6 / 1000 (:func:`hubrl.units.parse_steps`)."""
    try:
        return parse_steps(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def bounded_float(low: float = 0.0, high: float = math.inf, *, low_open: bool = False) -> Callable[[str], float]:
    """A type for a finite float in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    if math.isinf(high):
        span = f"{'>' if low_open else '>='} {low:g}"
    else:
        span = f"in {'(' if low_open else '['}{low:g}, {high:g}]"

    def parse(text: str) -> float:
        value = _number(text, f"a number {span}")
        if value < low or value > high or (low_open and value == low):
            raise argparse.ArgumentTypeError(f"{text} is out of range: expected a number {span}")
        return value

    parse.__name__ = "number"
    return parse


non_negative_float = bounded_float(0.0)
probability = bounded_float(0.0, 1.0)


def device(text: str) -> str:
    """A torch device string (``auto``, ``cpu``, ``cuda``, ``cuda:1``, ``mps`` ...), checked by torch.
    Whether this machine has it is checked when the command starts (:func:`hubrl.runconfig.check_device`)."""
    from hubrl.runconfig import check_device_name

    try:
        return check_device_name(text)
    except UsageError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_threads_flag(parser: argparse.ArgumentParser) -> None:
    """``--threads``: the same flag on every command that runs torch (hubrl.runtime.configure_threads)."""
    parser.add_argument("--threads", type=positive_int, default=None, metavar="N",
                        help="Torch CPU threads (default: torch's, one per core; use 1 when other processes share the cores).")


def add_common_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--algo", default="ppo", choices=["ppo", "a2c"],
                        help="RL algorithm (RL Zoo Atari presets). Default: ppo.")
    parser.add_argument("--n-envs", type=env_count, default=None, metavar="N",
                        help="Parallel games, up to 1024 (default: the preset's, 8 for PPO, 16 for A2C).")
    parser.add_argument("--seed", type=seed, default=0, metavar="SEED", help="Random seed of agent and envs. Default: 0.")
    parser.add_argument("--device", type=device, default="auto", metavar="DEVICE",
                        help="Torch device: auto, cpu, cuda, cuda:1, mps ... "
                             "Default: auto (CUDA when available, else the CPU).")
    add_threads_flag(parser)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                        help="Encoders' arithmetic: fp32, or bf16 autocast (faster on CPUs with AVX512-BF16; its "
                             "100k-step learning-curve check, 2 seeds, differed from fp32 in both directions, so not "
                             "the default: BENCHMARKS.md). Default: fp32.")
    parser.add_argument("--tensorboard-log", type=path_text, default=None, metavar="DIR",
                        help="TensorBoard folder (default: tb/ inside the run folder).")
    parser.add_argument("--hyperparams", type=path_text, default=None, metavar="YAML",
                        help="YAML file of hyperparameter overrides, e.g. n_steps: 64 "
                             "(keys as in agents/hyperparams/<algo>.yml).")
    parser.add_argument("--no-progress-bar", action="store_true", help="Hide the progress bar (e.g. in logs).")


# ----------------------------------------------------------------------------- the boundary

_OS_ADVICE = {
    errno.ENOSPC: "the disk is full: free some space and rerun (--resume continues from the last checkpoint)",
    errno.EDQUOT: "the disk quota is exceeded: free some space and rerun (--resume continues from the last checkpoint)",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to, or fix its permissions",
    errno.EPERM: "operation not permitted: choose a folder you can write to, or fix its permissions",
    errno.ENOTDIR: "a part of this path is a file, not a folder: choose another path",
    errno.EISDIR: "this is a folder, not a file: give a file name",
    errno.ENOENT: "no such file or folder: check the path",
    errno.EEXIST: "this is a file where a folder is needed: choose another path",  # mkdir(exist_ok=True) on a non-folder
}


def describe(exc: BaseException) -> str:
    """One line for a user error: the message, with the file and what to do for an ``OSError``."""
    if isinstance(exc, OSError) and not isinstance(exc, HubrlError):
        advice = _OS_ADVICE.get(exc.errno or -1) or exc.strerror or str(exc)
        text = f"{exc.filename}: {advice}" if exc.filename is not None else advice
    else:
        text = str(exc)
    return " ".join(text.split()) or type(exc).__name__  # one line, whatever the message held


def run_guarded(main: Callable[..., int], argv: Sequence[str] | None = None) -> int:
    """``main(argv)``'s exit code (``main()`` without ``argv``: it reads ``sys.argv``); a user
    error prints ``error: ...`` (one line) and gives 2."""
    try:
        return int((main() if argv is None else main(argv)) or 0)
    except _user_errors() as exc:
        print(f"error: {describe(exc)}", file=sys.stderr)
        return 2


def main_guard(main: Callable[..., int]) -> None:
    """Run a command's ``main`` behind the error boundary and exit with its code."""
    sys.exit(run_guarded(main))
