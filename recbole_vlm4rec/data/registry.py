"""The dataset registry: which dataset names exist and where their files come from.

A name is usable when it is embedded (ships with a package), or when ``dataset/<name>/`` holds its
RecBole atomic files. Named datasets that still need preparing are listed with the command that
prepares them, so an unknown-name error tells the user what to do.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from recbole_vlm4rec.formats import paths

DEFAULT_DATASET = "ml-100k"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    embedded: bool = False  # files ship inside an installed package: nothing to prepare
    how_to_prepare: str = ""
    # (users, items, interactions) published for this dataset; prepare warns when it differs.
    expected_counts: tuple[int, int, int] | None = None


AMAZON_2014 = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles/"


def _amazon(name: str, category: str, mmrec_folder: str, counts: tuple[int, int, int]) -> DatasetInfo:
    users, items, inters = counts
    return DatasetInfo(
        name,
        f"Amazon {category.replace('_', ' ')} (2014 reviews, 5-core, MMRec's split): {users:,} "
        f"users, {items:,} items, {inters:,} interactions; images from product metadata.",
        how_to_prepare=(
            f"Prepare it from MMRec's data/{mmrec_folder} folder: `vlm4rec prepare mmrec "
            f"<folder> --name {name}`, or from the Amazon 2014 dumps reviews_{category}_5.json.gz "
            f"+ meta_{category}.json.gz ({AMAZON_2014}): `vlm4rec prepare amazon --reviews "
            f"reviews_{category}_5.json.gz --meta meta_{category}.json.gz --name {name} "
            "--split mmrec`. See docs/datasets.md."
        ),
        expected_counts=counts,
    )


NAMED_DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo(
            "ml-100k",
            "MovieLens 100K (943 users, 1,682 items, 100,000 ratings); item text = title, year, "
            "genres. Ships inside the recbole wheel: the offline default.",
            embedded=True,
        ),
        _amazon("amazon-baby", "Baby", "baby", (19445, 7050, 160792)),
        _amazon("amazon-sports", "Sports_and_Outdoors", "sports", (35598, 18357, 296337)),
        _amazon("amazon-clothing", "Clothing_Shoes_and_Jewelry", "clothing",
                (39387, 23033, 278677)),
        DatasetInfo(
            "ml-100k-posters",
            "MovieLens 100K (RecBole's copy) with movie posters: 1,682 items, about 1,421 with a "
            "poster image referenced in place; item text = title, year, genres.",
            how_to_prepare=(
                "Prepare it with `vlm4rec prepare ml-100k-posters --posters "
                "<movielens-posters folder>` (the folder holds ml100k_items_with_posters.tsv and "
                "images/; ml-100k itself comes from the recbole wheel). See docs/datasets.md."
            ),
            expected_counts=(943, 1682, 100000),
        ),
    ]
}


class UnknownDatasetError(ValueError):
    pass


def is_embedded(name: str) -> bool:
    info = NAMED_DATASETS.get(name)
    return bool(info and info.embedded)


def has_atomic_files(name: str, root: Path | None = None) -> bool:
    """True when ``<root>/<name>/`` has ``<name>.inter`` or predefined ``<name>.train.inter``."""
    folder = (root or paths.dataset_root()) / name
    return (folder / f"{name}.inter").is_file() or (folder / f"{name}.train.inter").is_file()


def available_datasets(root: Path | None = None) -> list[str]:
    """Names that can run now: embedded ones and prepared folders under ``dataset/``."""
    root = root or paths.dataset_root()
    names = {info.name for info in NAMED_DATASETS.values() if info.embedded}
    if root.is_dir():
        names |= {p.name for p in root.iterdir() if p.is_dir() and has_atomic_files(p.name, root)}
    return sorted(names)


def check_dataset(name: str, root: Path | None = None) -> None:
    """Raise UnknownDatasetError (saying what exists and how to prepare) unless ``name`` can run."""
    if name in available_datasets(root):
        return
    info = NAMED_DATASETS.get(name)
    folder = (root or paths.dataset_root()) / name
    if info is not None:
        raise UnknownDatasetError(
            f"dataset '{name}' is not prepared: no atomic files in {folder}. "
            f"{info.how_to_prepare}"
        )
    available = available_datasets(root)
    known = list(dict.fromkeys([*available, *NAMED_DATASETS]))  # a named one may be available too
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise UnknownDatasetError(
        f"unknown dataset '{name}': no {folder}/{name}.inter.{hint}\n"
        f"  available now: {', '.join(available) or 'none'}\n"
        f"  named (need preparing): "
        f"{', '.join(n for n in NAMED_DATASETS if n not in available) or 'none'}"
    )
