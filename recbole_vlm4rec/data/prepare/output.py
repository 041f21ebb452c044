"""Write a prepared dataset folder atomically: atomic files, item metadata, features, card.

Every source module builds a :class:`PreparedDataset` in memory; :func:`write_dataset` turns it
into ``<root>/<name>/`` (format in ``recbole_vlm4rec/data/prepare/__init__.py``). The folder is
assembled in ``<root>/.<name>.preparing-<pid>/`` and renamed into place only when complete, so an
interrupted prepare never leaves a half-written dataset that RecBole would load. Output is a pure
function of the inputs (no times, fixed row order), so preparing twice gives identical bytes.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from recbole_vlm4rec.data.prepare.card import write_card
from recbole_vlm4rec.data.prepare.prepared import SPLIT_NAMES, PreparedDataset
from recbole_vlm4rec.data.prepare.values import clean_text
from recbole_vlm4rec.formats.features import save_feature

# Files written by later stages (features/, descriptions/ and the grounding cache) and downloaded
# images survive a re-prepare: they are carried into the new folder unless prepare rewrites them.
CARRIED_OVER = ("features", "images", "descriptions")


def format_number(value: Any) -> str:
    """Floats without a spurious ``.0`` (``5.0`` -> ``5``), so files read like the sources."""
    if value is None or value == "" or (isinstance(value, float) and np.isnan(value)):
        return ""
    number = float(value)
    return str(int(number)) if number.is_integer() else repr(number)


def _inter_lines(frame: pd.DataFrame) -> list[str]:
    columns = [c for c in ("user_id", "item_id", "rating", "timestamp") if c in frame.columns]
    types = {"user_id": "token", "item_id": "token", "rating": "float", "timestamp": "float"}
    lines = ["\t".join(f"{c}:{types[c]}" for c in columns)]
    values = [frame[c].tolist() for c in columns]
    numeric = [c in ("rating", "timestamp") for c in columns]
    for row in zip(*values):
        lines.append("\t".join(
            format_number(v) if is_num else str(v) for v, is_num in zip(row, numeric)
        ))
    return lines


def _item_lines(items: pd.DataFrame, types: dict[str, str]) -> list[str]:
    columns = list(items.columns)
    lines = ["\t".join(f"{c}:{types.get(c, 'token_seq')}" for c in columns)]
    for row in items.itertuples(index=False):
        lines.append("\t".join(
            format_number(v) if types.get(c) == "float" else clean_text(v)
            for c, v in zip(columns, row)
        ))
    return lines


def _write_lines(path: Path, lines: list[str]) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("\n".join(lines) + "\n")


def write_dataset(prepared: PreparedDataset, root: Path) -> Path:
    """Write ``root/<name>/`` atomically; returns its path. Replaces an existing folder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    final = root / prepared.name
    _remove_stale_leftovers(root, prepared.name)
    staging = root / f".{prepared.name}.preparing-{os.getpid()}"
    staging.mkdir()
    try:
        _write_files(prepared, staging)
        write_card(prepared, staging)
        _carry_over(final, staging)
        _swap_into_place(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return final


def _remove_stale_leftovers(root: Path, name: str) -> None:
    """Delete staging/retired folders of ``name`` left by a prepare that was killed outright."""
    for pattern in (f".{name}.preparing-*", f".{name}.old-*"):
        for folder in root.glob(pattern):
            pid = folder.name.rsplit("-", 1)[-1]
            if pid.isdigit() and int(pid) != os.getpid() and _process_alive(int(pid)):
                continue  # another prepare of the same name is running right now
            shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_files(prepared: PreparedDataset, folder: Path) -> None:
    name, inter = prepared.name, prepared.inter
    if prepared.predefined_split:
        for label, part in enumerate(SPLIT_NAMES):
            _write_lines(folder / f"{name}.{part}.inter", _inter_lines(inter[inter["split"] == label]))
    else:
        _write_lines(folder / f"{name}.inter", _inter_lines(inter))
    if prepared.items is not None:
        _write_lines(folder / f"{name}.item", _item_lines(prepared.items, prepared.item_types))
    for feature_name, feature in sorted(prepared.features.items()):
        save_feature(folder / "features", feature_name, feature.matrix, feature.tokens, feature.meta)
    for relative, text in sorted(prepared.extra_files.items()):
        path = folder / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link (or copy) files of ``old``'s carried folders that ``new`` does not have.

    Features an earlier prepare imported (meta ``kind: imported``) are not carried: when the
    source no longer has them, they must disappear rather than go stale.
    """
    from recbole_vlm4rec.formats.features import read_meta

    # the dataset's own yaml (config.py): user edits survive a re-prepare
    own_yaml = old / f"{old.name}.yaml"
    if own_yaml.is_file() and not (new / own_yaml.name).exists():
        shutil.copy2(own_yaml, new / own_yaml.name)
    for sub in CARRIED_OVER:
        source = old / sub
        if not source.is_dir():
            continue
        for path in sorted(source.rglob("*")):
            target = new / path.relative_to(old)
            if path.is_dir() or target.exists() or path.name.startswith("."):
                continue
            if sub == "features" and (read_meta(path.parent, path.stem) or {}).get(
                    "kind") == "imported":
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, target)
            except OSError:
                shutil.copy2(path, target)


def _swap_into_place(staging: Path, final: Path) -> None:
    if not final.exists():
        os.replace(staging, final)
        return
    retired = final.parent / f".{final.name}.old-{os.getpid()}"
    if retired.exists():
        shutil.rmtree(retired)
    os.replace(final, retired)
    os.replace(staging, final)
    shutil.rmtree(retired, ignore_errors=True)
