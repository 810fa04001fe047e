"""The commands the docs show parse with today's command line, in its one flag vocabulary.

Every shell command in README.md, BENCHMARKS.md and benchmarks/**/README.md that runs one of
hubrl's commands (``python scripts/<x>.py ...``, ``hubrl-<command> ...``, ``python -m hubrl
<command> ...``), in a fenced block or in backticks in prose, multi-line with ``\\`` or inside
``for`` loops and ``&&`` chains, is one test case (its id: file:line). Each is parsed by the real
parser of ``hubrl.cli.<command>`` (nothing runs) and must use no deprecated spelling and no
abbreviated flag. So are the examples of each command's ``--help``. Around them: the paths and
flags the docs name exist, README's layout lists the modules there are, and the package's messages
name commands that exist. The extractor and the checker are tested on synthetic text at the end,
so a doc that goes wrong cannot slip through a guard that silently finds nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import re
import shlex
from dataclasses import dataclass, field

import pytest

from hubrl.cli import COMMANDS
from hubrl.errors import UsageError
from tests.conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "BENCHMARKS.md", *sorted((ROOT / "benchmarks").rglob("README.md"))]

# scripts/<file>.py -> its command, read from the wrappers themselves (run_script("<command>", __file__))
SCRIPTS = {path.name: match.group(1) for path in sorted((ROOT / "scripts").glob("*.py"))
           if (match := re.search(r'run_script\("(\w+)"', path.read_text()))}

# <Placeholder> in a doc command -> a real value to parse it with
PLACEHOLDERS = {"Game": "Alien", "game": "alien", "seed": "0"}
ELIDED = ("...", "…")
SEPARATORS = {";", "&&", "||", "|", "&", "\n"}
_PLACEHOLDER = re.compile(r"<([A-Za-z][\w-]*)>")
_UNKNOWN_PREFIX = "__placeholder_"
_UNKNOWN = _UNKNOWN_PREFIX + "{}__"
_MARKER = re.compile(r"scripts/\S+\.py|\bhubrl-\w|-m\s+hubrl\b")  # text that may hold a command of ours


@dataclass
class DocCommand:
    """One command of a doc: where it is, what it runs (``name``: a command of hubrl.cli, or what the
    doc wrote where one should be), and its argument lists (several for a ``for`` loop)."""

    where: str
    text: str
    name: str
    argvs: list[list[str]] = field(default_factory=list)
    error: str | None = None  # the text could not be read as shell words


# ----------------------------------------------------------------------------- extraction


def _words(text: str) -> list[str]:
    """Shell words of ``text``; ``;``, ``&&``, ``|`` ... are words of their own; ``# ...`` is dropped."""
    text = re.sub(r"\[(-[^\]\[]*)\]", r"\1", text)  # an optional flag written [--lite] is checked as --lite
    text = re.sub(r"(?<=\s)\d+(?=[<>])", "", text)  # 2>&1: the descriptor is no argument
    text = _PLACEHOLDER.sub(lambda m: PLACEHOLDERS.get(m.group(1), _UNKNOWN.format(m.group(1))), text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>()")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    return list(lexer)


def _simple_commands(words: list[str], start: int = 0, stop: str | None = None) -> tuple[list[list[str]], int]:
    """The simple commands in ``words`` from ``start`` up to the word ``stop`` (a loop's ``done``), with
    each ``for VAR in A B; do ...; done`` unrolled over its values; and the index after them."""
    commands: list[list[str]] = []
    i = start
    while i < len(words):
        word = words[i]
        if word in SEPARATORS:
            i += 1
        elif word == stop:
            return commands, i
        elif word == "for" and i + 2 < len(words) and words[i + 2] == "in":
            var, i = words[i + 1], i + 3
            values = []
            while i < len(words) and words[i] not in SEPARATORS and words[i] != "do":
                values.append(words[i])
                i += 1
            while i < len(words) and words[i] in SEPARATORS:
                i += 1
            if i == len(words) or words[i] != "do":
                raise ValueError(f"for {var} in ...: no do")
            body, i = _simple_commands(words, i + 1, stop="done")
            if i == len(words):
                raise ValueError(f"for {var} in ...: no done")
            i += 1
            for value in values:
                commands += [[w.replace("${" + var + "}", value).replace("$" + var, value) for w in cmd] for cmd in body]
        else:
            cmd = []
            while i < len(words) and words[i] not in SEPARATORS and words[i] not in {"<", ">", ">&", "<&", "(", ")"}:
                cmd.append(words[i])
                i += 1
            while i < len(words) and words[i] not in SEPARATORS:  # a redirection: its target is no command
                i += 1
            commands.append(cmd)
    if stop is not None:
        return commands, len(words)
    return commands, i


def invocation(words: list[str], prose: bool = False) -> tuple[str, list[str]] | None:
    """``(command, argv)`` when the simple command ``words`` runs one of hubrl's commands (``command``:
    the name it gives, valid or not), else None. In prose a bare name without arguments
    (`hubrl-rank`, `scripts/rank_hub.py`) is a mention, not a command."""
    while words and re.fullmatch(r"[A-Za-z_]\w*=\S*", words[0]):  # OMP_NUM_THREADS=1 python ...
        words = words[1:]
    if not words:
        return None
    first, rest = words[0], words[1:]
    if re.fullmatch(r"(\S*/)?python(3(\.\d+)?)?", first):
        if rest[:2] == ["-m", "hubrl"]:
            if len(rest) == 2 or rest[2].startswith("-"):
                return "hubrl", rest[2:]
            return rest[2], rest[3:]
        if not rest or not re.fullmatch(r"(\./)?scripts/\S+\.py", rest[0]):
            return None
        first, rest, prose = rest[0], rest[1:], False
    if prose and not rest:
        return None
    if re.fullmatch(r"(\./)?scripts/\S+\.py", first):
        return SCRIPTS.get(first.rsplit("/", 1)[1], first), rest
    if first.startswith("hubrl-"):
        return first.removeprefix("hubrl-"), rest
    return None


def _commands_of(text: str, where: str, prose: bool) -> list[DocCommand]:
    try:
        simple, _ = _simple_commands(_words(text))
    except ValueError as exc:
        return [DocCommand(where, text, "?", error=f"not shell words: {exc}")] if _MARKER.search(text) else []
    found: list[DocCommand] = []
    in_loop = text.lstrip().startswith("for ")
    for words in simple:
        hit = invocation(words, prose)
        if hit is None:
            continue
        name, argv = hit
        if name.startswith(_UNKNOWN_PREFIX) or name in ELIDED:
            continue  # `python -m hubrl <command>`: the form, not a command
        if in_loop and found and found[-1].name == name:
            found[-1].argvs.append(argv)  # a loop's unrolled commands are one case
        else:
            found.append(DocCommand(where, text, name, [argv]))
    return found


def _fenced_blocks(lines: list[str]) -> tuple[list[tuple[int, list[str]]], set[int]]:
    """Shell blocks (``bash``, ``sh``, ``shell``, ``console`` or no language) as (first line, lines),
    and the indices of every line inside a fence of any language."""
    blocks, fenced, i = [], set(), 0
    while i < len(lines):
        match = re.match(r"\s*(```+|~~~+)\s*([\w+-]*)", lines[i])
        if not match:
            i += 1
            continue
        fence, lang, start = match.group(1), match.group(2).lower(), i
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            i += 1
        fenced.update(range(start, i + 1))
        if lang in ("", "bash", "sh", "shell", "console", "zsh"):
            blocks.append((start + 1, lines[start + 1:i]))
        i += 1
    return blocks, fenced


def extract(text: str, name: str) -> list[DocCommand]:
    """Every command of hubrl in the Markdown ``text`` (of the file ``name``), in order."""
    lines = text.splitlines()
    blocks, fenced = _fenced_blocks(lines)
    found: list[tuple[int, DocCommand]] = []
    for first, body in blocks:
        logical: list[tuple[int, str]] = []  # (line number, one shell line: continuations and loops joined)
        continued = False
        for offset, line in enumerate(body):
            number = first + offset + 1
            line = re.sub(r"^\s*\$ ", "", line)
            if continued:
                start, so_far = logical.pop()
                joined = so_far[:-1] + " " + line if so_far.endswith("\\") else so_far + " ; " + line
                logical.append((start, joined))
            else:
                logical.append((number, line))
            text_now = logical[-1][1]
            loops = len(re.findall(r"(^|[;&|]\s*|\bdo\s+)for\s", text_now)) - len(re.findall(r"\bdone\b", text_now))
            continued = text_now.endswith("\\") or loops > 0
        for number, line in logical:
            found += [(number, cmd) for cmd in _commands_of(line, f"{name}:{number}", prose=False)]
    prose = "\n".join("" if i in fenced else line for i, line in enumerate(lines))
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", prose):
        span = match.group(1).replace("\n", " ")
        if _MARKER.search(span):
            number = prose.count("\n", 0, match.start()) + 1
            found += [(number, cmd) for cmd in _commands_of(span, f"{name}:{number}", prose=True)]
    found.sort(key=lambda item: item[0])
    seen: dict[str, int] = {}
    for _, cmd in found:  # two commands on one line: file:line, file:line#2
        seen[cmd.where] = seen.get(cmd.where, 0) + 1
        if seen[cmd.where] > 1:
            cmd.where += f"#{seen[cmd.where]}"
    return [cmd for _, cmd in found]


# ----------------------------------------------------------------------------- checking


def parse(command: str, argv: list[str]) -> argparse.Namespace:
    """Parse ``argv`` as the command ``command`` does (its ``parse_args``, else its parser), running nothing."""
    module = importlib.import_module(f"hubrl.cli.{command}")
    parse_args = getattr(module, "parse_args", None)
    return parse_args(argv) if parse_args is not None else module.build_parser().parse_args(argv)


def _option_strings(parser: argparse.ArgumentParser) -> set[str]:
    """The flags of ``parser`` and of its subcommands' parsers."""
    names = set(parser._option_string_actions)
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                names |= _option_strings(sub)
    return names


def problems(name: str, argv: list[str]) -> list[str]:
    """What is wrong with the doc command ``name argv``; empty when it parses, in the current vocabulary."""
    if name == "hubrl":  # python -m hubrl --help / --version
        return [] if argv in (["-h"], ["--help"], ["--version"]) else [f"python -m hubrl {shlex.join(argv)}: no command"]
    if name not in COMMANDS:
        return [f"{name!r} is no command of hubrl (one of {', '.join(COMMANDS)}; scripts: {', '.join(SCRIPTS)})"]
    found = []
    values = argv[:argv.index("--")] if "--" in argv else argv
    elided = [w for w in values if w in ELIDED or w.startswith(_UNKNOWN_PREFIX)]
    if elided:
        found.append(f"placeholder or elided arguments {elided}: write a command that runs "
                     f"(or add the placeholder to PLACEHOLDERS)")
    parser = importlib.import_module(f"hubrl.cli.{name}").build_parser()
    known = _option_strings(parser)
    deprecated = {alias for p in _parsers(parser) for alias in p.deprecated_aliases}
    for word in values:
        flag = word.partition("=")[0]
        if flag.startswith("--") and len(flag) > 2 and flag not in known and flag not in deprecated:
            found.append(f"{flag} is not a flag of {name} (abbreviated or unknown)")
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            parse(name, argv)
        except UsageError as exc:
            found.append(f"does not parse: {exc}")
        except SystemExit as exc:  # --help
            if exc.code not in (0, None):
                found.append(f"exits with {exc.code}: {err.getvalue().strip()}")
    found += [line for line in err.getvalue().splitlines() if "deprecated" in line]
    return found


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def check(cmd: DocCommand) -> list[str]:
    if cmd.error:
        return [cmd.error]
    return [problem for argv in cmd.argvs for problem in problems(cmd.name, argv)]


# ----------------------------------------------------------------------------- the docs

DOC_COMMANDS = [cmd for doc in DOCS for cmd in extract(doc.read_text(), doc.relative_to(ROOT).as_posix())]


def test_the_docs_show_commands():
    """The guard finds the docs' commands (a broken extractor would pass every doc)."""
    per_doc = {doc.relative_to(ROOT).as_posix(): 0 for doc in DOCS}
    for cmd in DOC_COMMANDS:
        per_doc[cmd.where.split(":")[0]] += 1
    assert all(n > 0 for n in per_doc.values()), per_doc
    assert {cmd.name for cmd in DOC_COMMANDS} >= set(COMMANDS), "each command is shown at least once"
    assert len(DOC_COMMANDS) >= 40


@pytest.mark.parametrize("cmd", DOC_COMMANDS, ids=[cmd.where for cmd in DOC_COMMANDS])
def test_doc_command_parses_in_the_current_vocabulary(cmd):
    assert not check(cmd), f"{cmd.where}: {cmd.text.strip()}\n  " + "\n  ".join(check(cmd))


def _help_examples() -> list[DocCommand]:
    """The examples in each command's ``--help`` (its module docstring, ``%(prog)s ...`` lines), as
    ``hubrl-<command>`` runs them; ids name the module's file and line."""
    import ast

    found = []
    for command in COMMANDS:
        path = ROOT / "hubrl" / "cli" / f"{command}.py"
        first = ast.parse(path.read_text()).body[0].lineno  # the docstring's first line
        doc = importlib.import_module(f"hubrl.cli.{command}").__doc__.replace("%(prog)s", f"hubrl-{command}")
        for cmd in extract("```bash\n" + doc + "\n```", "doc"):
            number = int(cmd.where.split(":")[1].split("#")[0]) - 2 + first  # the fence took a line
            cmd.where = f"hubrl/cli/{command}.py:{number}"
            found.append(cmd)
    return found


HELP_EXAMPLES = _help_examples()


@pytest.mark.parametrize("cmd", HELP_EXAMPLES, ids=[cmd.where for cmd in HELP_EXAMPLES])
def test_help_example_parses_in_the_current_vocabulary(cmd):
    assert not check(cmd), f"{cmd.where}: {cmd.text.strip()}\n  " + "\n  ".join(check(cmd))


def test_each_command_has_help_examples():
    assert {cmd.name for cmd in HELP_EXAMPLES} == set(COMMANDS)


# pip's, TensorBoard's, tar's and git's flags, in the docs' commands
OTHER_TOOLS_FLAGS = {"--index-url", "--logdir", "--exclude", "--source", "--cached"}


def test_every_flag_the_docs_name_is_a_current_flag():
    """A flag anywhere in the docs, prose included (`--noise 1.0`, `--resume --timesteps 10M`), is a flag
    of one of the commands; a deprecated spelling only in the README's table of them, beside its flag; RL Zoo's
    own (``hubrl.cli.common.RL_ZOO_FLAGS``) only on a line that says it is RL Zoo's."""
    from hubrl.cli.common import FLAG_VOCABULARY, RL_ZOO_FLAGS

    flags = set().union(*(_option_strings(importlib.import_module(f"hubrl.cli.{c}").build_parser()) for c in COMMANDS))
    replaced_by = {alias: flag for flag, aliases in FLAG_VOCABULARY.values() for alias in aliases}
    wrong = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", line):
                in_table = line.startswith("|") and flag in replaced_by and f"`{replaced_by[flag]}`" in line
                zoo = flag in RL_ZOO_FLAGS and "RL Zoo" in line  # RL Zoo's own flag, named as such
                if flag not in flags and flag not in OTHER_TOOLS_FLAGS and not in_table and not zoo:
                    wrong.append(f"{doc.relative_to(ROOT)}:{number}: {flag}")
    assert not wrong, wrong


def test_the_paths_the_docs_name_exist():
    """A file or folder of the repository written in backticks (`hubrl/stats.py`) exists, and a
    pytest node id (`tests/test_x.py::test_y`) names a test that file defines; patterns
    (`<expert>`, `*`) are skipped."""
    missing = []
    for doc in DOCS:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            for path in re.findall(r"`((?:hubrl|agents|envs|scripts|benchmarks|tests)/[^`\s]*)`", line):
                path, _, test = path.partition("::")
                if re.search(r"[<>*{}]", path):
                    continue
                file = ROOT / path
                if not file.exists() or (test and not re.search(rf"^def {re.escape(test)}\(", file.read_text(), re.M)):
                    missing.append(f"{doc.relative_to(ROOT)}:{number}: {path}{'::' + test if test else ''}")
    assert not missing, missing


def test_the_readme_layout_names_every_module():
    """README's Layout block names each folder's modules: the ones that exist, and only those."""
    text = (ROOT / "README.md").read_text()
    block = text.split("## Layout", 1)[1].split("```", 2)[1]
    entries: dict[str, str] = {}
    folder = None
    for line in block.splitlines():
        if line and not line[0].isspace():
            folder, _, line = line.partition(" ")
        if folder:
            entries[folder] = entries.get(folder, "") + " " + line
    for folder in ("hubrl/", "hubrl/cli/", "hubrl/speed/", "agents/", "envs/", "scripts/"):
        named = set(re.findall(r"\b\w+\.py\b", entries.get(folder, "")))
        present = {p.name for p in (ROOT / folder).glob("*.py") if p.name != "__init__.py"}
        assert named == present, f"{folder}: not in the layout {sorted(present - named)}, gone {sorted(named - present)}"


def test_the_package_names_commands_that_exist():
    """A command the package's messages or docstrings name (`scripts/<x>.py`, `python -m hubrl <x>`) exists."""
    wrong = []
    for package in ("hubrl", "agents", "envs"):
        for path in sorted((ROOT / package).rglob("*.py")):
            text = path.read_text()
            for script in re.findall(r"scripts/(\w+\.py)", text):
                if script not in SCRIPTS:
                    wrong.append(f"{path.relative_to(ROOT)}: scripts/{script}")
            for name in re.findall(r"python -m hubrl ([a-z][\w-]*)", text):
                if name not in COMMANDS:
                    wrong.append(f"{path.relative_to(ROOT)}: python -m hubrl {name}")
    assert not wrong, wrong


# ----------------------------------------------------------------------------- the guard itself

SYNTHETIC = """\
Prose with `python scripts/transfer.py --env Alien --timesteps 100k` and a mention of `hubrl-rank`
and of `scripts/benchmark.py`, and the form `python -m hubrl <command>`.

```bash
python scripts/benchmark.py run --root g --env Alien Gopher \\
    --seed 0 1 --timesteps 1M   # a comment
pip install -e ".[ray]" && hubrl-rank --env <Game> --json r.json
OMP_NUM_THREADS=1 python -m hubrl speed envs --n-envs 4 2>&1 | tee speed.log
for g in Alien Gopher; do
  python scripts/pretrain_sources.py --env $g --timesteps 10M
done
python scripts/transfer.py --env Alien --method zoo-tuning [--lite]
```

```python
subprocess.run("python scripts/transfer.py --bogus")
```

`for g in A B; do for p in ridge knn; do python scripts/rank_hub.py --env $g --probe $p; done; done`
"""


def test_extract_finds_each_form_of_a_command():
    found = extract(SYNTHETIC, "doc.md")
    assert [(c.where, c.name, c.argvs) for c in found] == [
        ("doc.md:1", "transfer", [["--env", "Alien", "--timesteps", "100k"]]),
        ("doc.md:5", "bench", [["run", "--root", "g", "--env", "Alien", "Gopher", "--seed", "0", "1", "--timesteps", "1M"]]),
        ("doc.md:7", "rank", [["--env", "Alien", "--json", "r.json"]]),
        ("doc.md:8", "speed", [["envs", "--n-envs", "4"]]),
        ("doc.md:9", "pretrain", [["--env", "Alien", "--timesteps", "10M"], ["--env", "Gopher", "--timesteps", "10M"]]),
        ("doc.md:12", "transfer", [["--env", "Alien", "--method", "zoo-tuning", "--lite"]]),
        ("doc.md:19", "rank", [["--env", g, "--probe", p] for g in "AB" for p in ("ridge", "knn")]),
    ]
    assert all(not check(c) for c in found)


@pytest.mark.parametrize("text, why", [
    ("`python scripts/transfer.py --env Alien --bogus 1`", "unrecognized arguments: --bogus"),
    ("`python scripts/benchmark.py run --root g --games Alien --timesteps 1M`", "--games is deprecated"),
    ("`hubrl-bench report g --budget 1M`", "--budget is deprecated"),
    ("`python scripts/transfer.py --env Alien --time 1M`", "--time is not a flag of transfer"),
    ("`python scripts/transfer.py --env Alien --timesteps lots`", "does not parse"),
    ("`python scripts/benchmark.py run --root g --env Alien`", "required: --timesteps"),
    ("`python scripts/benchmark.py run ... --ray-address auto`", "elided"),
    ("`python scripts/_cli.py --env Alien`", "no command of hubrl"),
    ("`python -m hubrl train --env Alien`", "no command of hubrl"),
    ("`python scripts/pretrain_sources.py --env <Nope> --timesteps 1M`", "placeholder"),
    ("```bash\nfor g in Alien; do python scripts/rank_hub.py --env $g --frames 1k; done\n```", "--frames is deprecated"),
    ("```\npython scripts/benchmark_speed.py envs \\\n  --steps 2k\n```", "--steps is deprecated"),
])
def test_check_refuses_a_wrong_doc_command(text, why):
    found = extract(text, "doc.md")
    assert len(found) == 1
    assert any(why in problem for problem in check(found[0])), check(found[0])


def test_a_wrong_flag_in_the_readme_is_caught():
    """The README with one flag misspelt (a copy; the file is not touched) fails the check at that line."""
    text = (ROOT / "README.md").read_text()
    assert "--top-k 1" in text
    bad = text.replace("--top-k 1", "--topk 1", 1)
    number = text[:text.index("--top-k 1")].count("\n") + 1

    def failing(doc: str) -> set[str]:
        return {cmd.where for cmd in extract(doc, "README.md") if check(cmd)}

    assert failing(bad) - failing(text) == {f"README.md:{number}"}
