"""Where things are: the shipped protocol (configs), and the user's dataset and results folders.

The protocol (``configs/``: overall.yaml, one yaml per model and per named dataset, prompts,
benchmark specs) is package data: it is found inside the installed package, the same way from a
checkout, an editable install or a wheel (the checkout's top-level ``configs`` is a link to it).
A missing protocol file is an error (see run/protocol.py), never a silent fallback.

User data lives under the *project home*: ``$VLM4REC_HOME`` when set, else the checkout this
package runs from (it has ``setup.cfg`` beside the package), else the current directory. Datasets
are ``<home>/dataset/<name>/`` (atomic files, ``features/``, ``descriptions/``, ``card.json``).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]


class ProtocolMissingError(FileNotFoundError):
    """A shipped protocol file is absent: the installation is broken."""


def configs_dir() -> Path:
    """The shipped protocol folder (``recbole_vlm4rec/configs``)."""
    folder = PACKAGE_DIR / "configs"
    if not (folder / "overall.yaml").is_file():
        raise ProtocolMissingError(
            f"the shipped protocol is missing: no {folder / 'overall.yaml'}. The package was "
            "installed without its configs (package data); reinstall recbole-vlm4rec"
        )
    return folder


def project_root() -> Path:
    """The project home: ``$VLM4REC_HOME``, else this checkout, else the current directory."""
    if os.environ.get("VLM4REC_HOME"):
        return Path(os.environ["VLM4REC_HOME"]).resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "setup.cfg").is_file() and (checkout / "run_recbole.py").is_file():
        return checkout
    return Path.cwd()


def dataset_root() -> Path:
    """Folder holding ``<name>/`` dataset folders (RecBole atomic files, features, cards)."""
    return project_root() / "dataset"


def features_dir(dataset: str) -> Path:
    """Documented home of a dataset's item feature files (see formats/features.py)."""
    return dataset_root() / dataset / "features"


def descriptions_dir(dataset: str) -> Path:
    """Where ``vlm4rec ground`` writes ``<tag>.jsonl`` (see formats/descriptions.py)."""
    return dataset_root() / dataset / "descriptions"
