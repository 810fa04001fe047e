"""hubrl: transfer learning from a hub of pretrained Atari policies (Hub-Pathway and baselines).

Importing ``hubrl`` makes the package's policies and extractors importable by name, so a
``model.zip`` saved by a hubrl run opens with stock ``stable_baselines3.PPO.load`` / ``A2C.load``.

The agents and environments are the subpackages ``hubrl.agents`` and ``hubrl.envs``. In the
repository they live in the top-level folders ``agents/`` and ``envs/``; an installation (a
wheel, or ``pip install -e .``) maps them into the package. In a plain clone that is not
installed, :func:`_find_clone_subpackages` below maps exactly these two names, nothing else.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from pathlib import Path
from typing import Sequence

__version__ = "0.1.0"

__all__ = ["__version__"]

_SUBPACKAGES = ("agents", "envs")  # repository folder -> hubrl.<folder>


class _CloneFinder(importlib.abc.MetaPathFinder):
    """Finds ``hubrl.agents`` and ``hubrl.envs`` in the repository's top-level folders (a clone
    without installation); any other name is left to the other finders."""

    def __init__(self, folders: dict[str, Path]) -> None:
        self.folders = folders

    def find_spec(self, fullname: str, path: Sequence[str] | None = None, target: object = None):
        folder = self.folders.get(fullname)
        if folder is None:
            return None
        return importlib.util.spec_from_file_location(fullname, folder / "__init__.py",
                                                      submodule_search_locations=[str(folder)])


def _find_clone_subpackages() -> None:
    """In a clone (the folders beside ``hubrl/``, not inside it), let ``hubrl.agents`` /
    ``hubrl.envs`` import from them: the ones beside the ``hubrl`` that was imported, even when
    another copy is installed in editable mode. A wheel has them inside the package: no finder."""
    here = Path(__file__).resolve().parent
    folders = {f"{__name__}.{name}": here.parent / name for name in _SUBPACKAGES
               if not (here / name).exists() and (here.parent / name / "__init__.py").is_file()}
    if folders and not any(isinstance(f, _CloneFinder) and f.folders == folders for f in sys.meta_path):
        sys.meta_path.insert(0, _CloneFinder(folders))


_find_clone_subpackages()
