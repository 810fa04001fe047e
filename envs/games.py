"""Game registry: name normalisation, action meanings and reference scores.

Users write a game the way they know it (``Alien``, ``alien``, ``ALE/Alien-v5``,
``AlienNoFrameskip-v4``, ``MsPacman``); ale-py wants its ROM id (``alien``, ``ms_pacman``).
:func:`resolve_game` maps the first onto the second and, for a name ale-py does not ship,
raises :class:`UnknownGameError` naming the closest matches.
"""

from __future__ import annotations

import difflib
import functools
import re
from dataclasses import dataclass
from typing import Iterable

from hubrl.errors import UsageError

__all__ = [
    "UnknownGameError",
    "ReferenceScore",
    "REFERENCE_SCORES",
    "resolve_game",
    "resolve_games",
    "display_name",
    "available_games",
    "action_meanings",
    "human_normalized_score",
]


class UnknownGameError(UsageError):
    """Raised for a game name that ale-py does not ship a ROM for."""


@dataclass(frozen=True)
class ReferenceScore:
    """Random-agent and human scores used for human normalisation (DQN Zoo / rliable values)."""

    random: float
    human: float


# Environment versions gymnasium registers for ALE games (``Alien-v0``, ``AlienNoFrameskip-v4``,
# ``ALE/Alien-v5``); any other suffix is a typo, not a game name.
ALE_VERSIONS = frozenset({0, 4, 5})

# Random / human scores from DQN Zoo (the values rliable uses).
REFERENCE_SCORES: dict[str, ReferenceScore] = {
    "alien": ReferenceScore(227.8, 7127.7),
    "gopher": ReferenceScore(257.6, 2412.5),
    "jamesbond": ReferenceScore(29.0, 302.8),
    "riverraid": ReferenceScore(1338.5, 17118.0),
    "seaquest": ReferenceScore(68.4, 42054.7),
}


@functools.lru_cache(maxsize=1)
def available_games() -> tuple[str, ...]:
    """ROM ids that the installed ale-py ships (``alien``, ``ms_pacman``, ...)."""
    from ale_py import roms

    return tuple(sorted(roms.get_all_rom_ids()))


def _snake(name: str) -> str:
    """``MsPacman`` -> ``ms_pacman``; ``ms_pacman`` and ``mspacman`` are left for the lookup."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower()


def resolve_game(name: str) -> str:
    """Return ale-py's ROM id for a user-given game name.

    Accepted forms: ``Alien``, ``alien``, ``ALE/Alien-v5``, ``AlienNoFrameskip-v4``,
    ``Alien-v5``, ``MsPacman``, ``ms_pacman``.

    :raises UnknownGameError: with close matches, when no shipped ROM fits.
    """
    if not isinstance(name, str) or not name.strip():
        raise UnknownGameError("Empty game name: pass e.g. 'Alien' or 'ALE/Alien-v5'.")
    raw = name.strip()
    base = raw.split("/", 1)[1] if raw.upper().startswith("ALE/") else raw
    version = re.search(r"(NoFrameskip|Deterministic)?-v(\d+)$", base)
    if version:
        if int(version.group(2)) not in ALE_VERSIONS:
            raise UnknownGameError(
                f"{name!r}: ALE has no v{version.group(2)} environments (v0, v4 and v5 exist). The suffix "
                "only names the game here; the protocol (sticky actions, frame skip) comes from the "
                "command's flags. Pass e.g. 'Alien' or 'ALE/Alien-v5'."
            )
        base = base[: version.start()]
    games = available_games()
    by_flat = {g.replace("_", ""): g for g in games}
    for candidate in (base, _snake(base), base.lower()):
        if candidate in games:
            return candidate
        flat = candidate.replace("_", "").lower()
        if flat in by_flat:
            return by_flat[flat]
    close = difflib.get_close_matches(base.lower().replace("_", ""), list(by_flat), n=3, cutoff=0.6)
    hint = (
        f" Did you mean {', '.join(display_name(by_flat[c]) for c in close)}?"
        if close
        else f" {len(games)} games are available, e.g. Alien, Gopher, Seaquest."
    )
    raise UnknownGameError(f"Unknown Atari game {name!r}.{hint}")


def resolve_games(names: Iterable[str]) -> list[str]:
    """ROM ids of ``names`` (:func:`resolve_game`), each game once, in the order first given:
    ``Alien alien ALE/Alien-v5`` is one game, which a command must not train twice into one folder.

    :raises UnknownGameError: for the first name no shipped ROM fits.
    """
    return list(dict.fromkeys(resolve_game(name) for name in names))


def display_name(game: str) -> str:
    """CamelCase name of a ROM id: ``ms_pacman`` -> ``MsPacman``."""
    return "".join(part.capitalize() for part in resolve_game(game).split("_"))


@functools.lru_cache(maxsize=None)
def action_meanings(game: str, full_action_space: bool = False) -> tuple[str, ...]:
    """Names of the game's actions in the order the agent indexes them (``NOOP``, ``FIRE``, ...).

    The names are those of gymnasium's ``get_action_meanings()``; they map a game's minimal action
    set onto the 18-action full set, which is how a head trained on one game is reused on another.

    The lookup prints nothing: ALE's logger is set to errors only *before* the emulator is made,
    whose constructor otherwise prints ALE's banner (``A.L.E: Arcade Learning Environment ...``),
    so a command refused on what this returns (``hubrl-enjoy --env`` of a game with other actions)
    prints only its error. ale-py's own ``AtariEnv`` leaves the logger at errors too, after its banner.
    """
    import ale_py
    from ale_py import roms

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # static: the emulator made next prints no banner
    ale = ale_py.ALEInterface()
    ale.loadROM(roms.get_rom_path(resolve_game(game)))
    actions = ale.getLegalActionSet() if full_action_space else ale.getMinimalActionSet()
    return tuple(a.name for a in actions)


def human_normalized_score(game: str, score: float) -> float:
    """(score - random) / (human - random) with the DQN Zoo reference scores.

    :raises KeyError: when the game has no recorded reference scores.
    """
    ref = REFERENCE_SCORES[resolve_game(game)]
    return (score - ref.random) / (ref.human - ref.random)
