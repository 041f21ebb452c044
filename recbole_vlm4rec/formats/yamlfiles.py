"""Yaml as RecBole reads it: ``1e-4`` is a float (plain yaml reads it as a string).

Config layers, model yamls and benchmark specs are all read with these rules, so a value means the
same thing to a check as to the run.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml


@lru_cache(maxsize=1)
def _loader() -> type:
    """RecBole's float rule on a safe loader (libyaml's when it is there: fast)."""
    from recbole.config.configurator import Config

    base = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    resolver = Config._build_yaml_loader(None).yaml_implicit_resolvers["1"]
    # RecBole appends its float rule after yaml's own (which wants a dot: "1e-4" is a string)
    float_pattern = [p for tag, p in resolver if tag.endswith(":float")][-1]

    class Loader(base):  # type: ignore[misc, valid-type]
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", float_pattern,
                                 list("-+0123456789."))
    return Loader


def load_yaml(text: str) -> Any:
    """A yaml document read with RecBole's number rules."""
    return yaml.load(text, Loader=_loader())


def read_yaml_mapping(path: Path) -> dict[str, Any]:
    """A yaml file's top-level mapping (RecBole's number rules); empty when it holds no mapping."""
    values = load_yaml(Path(path).read_text(encoding="utf-8"))
    return values if isinstance(values, dict) else {}
