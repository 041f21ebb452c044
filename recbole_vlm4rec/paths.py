"""Where the project's folders are: configs/, dataset/, results/.

The project root is ``$VLM4REC_HOME`` when set, else the checkout this package was installed from
(editable install), else the current directory.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def project_root() -> Path:
    if os.environ.get("VLM4REC_HOME"):
        return Path(os.environ["VLM4REC_HOME"]).resolve()
    checkout = PACKAGE_DIR.parent
    if (checkout / "configs").is_dir():
        return checkout
    return Path.cwd()


def configs_dir() -> Path:
    return project_root() / "configs"


def dataset_root() -> Path:
    """Folder holding ``<name>/`` dataset folders (RecBole atomic files, features, cards)."""
    return project_root() / "dataset"


def features_dir(dataset: str) -> Path:
    """Documented home of a dataset's item feature files (see data/features.py)."""
    return dataset_root() / dataset / "features"
