"""Grounding prompts: versioned YAML files in ``configs/prompts/``, rendered per item, and the
checks that turn a raw model answer into a description (or a recorded failure reason).

Prompt file format (see ``configs/prompts/preference.yaml`` and ``structured.yaml``)::

    name: preference          # what --prompt names
    version: 1                # recorded per row; bump it when the wording changes meaning
    format: text              # text: free-form answer; json: an object with one key per slot
    user: |                   # the instructions; json prompts put {schema} where the slots go
      ...
    context: "Catalogue information about the item: {context}"   # added when an item has text
    min_words: 8              # text: shorter answers are 'degenerate_output'
    slots: {<domain>: {<slot>: <what goes there>}}               # json only; 'default' required
    min_filled: 0.5           # json: share of slots that must hold a real value

Lookup of ``--prompt NAME --domain D``: ``configs/prompts/D/NAME.yaml`` if it exists, else
``configs/prompts/NAME.yaml`` (whose ``slots[D]`` is used when present, else ``slots.default``).
``NAME`` may also be a path to a YAML file. Every edit of the file (not only ``version``) changes
:attr:`PromptSpec.digest`, which is part of the cache key, so edited prompts never reuse stale rows.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recbole_vlm4rec.formats.paths import configs_dir

FORMATS = ("text", "json")
DEFAULT_DOMAIN = "default"
_UNKNOWN = {"", "unknown", "n/a", "none", "null", "not visible", "unclear", "-"}


class PromptError(ValueError):
    """A prompt file that cannot be used; the message names the file and the field."""


class OutputRejected(ValueError):
    """A model answer that is not a usable description; ``reason`` is recorded per item."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class PromptSpec:
    """A loaded prompt, with the slots of one domain resolved."""

    name: str
    version: str
    format: str
    user: str
    context: str
    domain: str
    path: Path
    slots: dict[str, str] = field(default_factory=dict)
    min_words: int = 5
    min_filled: float = 0.5
    digest: str = ""  # sha256 over the file content and the domain: part of the cache key

    @property
    def structured_slots(self) -> tuple[str, ...] | None:
        return tuple(self.slots) if self.format == "json" else None

    def render(self, context: str = "") -> str:
        """The full prompt for one item; ``context`` is its catalogue text (may be empty)."""
        text = self.user.strip()
        if self.format == "json":
            schema = json.dumps({slot: f"<{hint}>" for slot, hint in self.slots.items()}, indent=2)
            text = text.replace("{schema}", schema)
        context = " ".join(context.split())
        if context and self.context:
            text += "\n" + self.context.replace("{context}", context)
        return text

    def prompt_key(self, rendered: str) -> str:
        """Cache key part for one item's prompt: file digest + the rendered text."""
        return hashlib.sha256(f"{self.digest}\n{rendered}".encode()).hexdigest()

    def parse(self, raw: str | None,
              min_filled: float | None = None) -> tuple[str, dict[str, Any] | None]:
        """``(text to encode, structured fields or None)``; OutputRejected when unusable.
        ``min_filled`` overrides the prompt's share of slots a JSON answer must fill."""
        if self.format == "json":
            share = self.min_filled if min_filled is None else min_filled
            return parse_structured(raw, self.slots, share)
        return check_free_text(raw, self.min_words), None


def prompts_dir() -> Path:
    return configs_dir() / "prompts"


def available_prompts(directory: Path | None = None) -> list[str]:
    directory = directory or prompts_dir()
    return sorted(path.stem for path in directory.glob("*.yaml"))


def load_prompt(name: str, domain: str | None = None, directory: Path | None = None) -> PromptSpec:
    """The prompt ``name`` (or a YAML path) for ``domain``; PromptError names what is wrong."""
    directory = directory or prompts_dir()
    domain = domain or DEFAULT_DOMAIN
    candidate = Path(name)
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        path = candidate
    elif (directory / domain / f"{name}.yaml").is_file():
        path = directory / domain / f"{name}.yaml"
    else:
        path = directory / f"{name}.yaml"
    if not path.is_file():
        known = ", ".join(available_prompts(directory)) or "none"
        raise PromptError(f"prompt {name!r} not found: no file {path} (prompts in {directory}: {known})")
    content = path.read_bytes()
    try:
        data = yaml.safe_load(content)
    except yaml.YAMLError as error:
        raise PromptError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(data, dict):
        raise PromptError(f"{path}: expected a mapping of prompt fields, got {type(data).__name__}")
    return _spec_from_data(data, path, domain, hashlib.sha256(content + domain.encode()).hexdigest())


def _spec_from_data(data: dict[str, Any], path: Path, domain: str, digest: str) -> PromptSpec:
    def need(key: str) -> Any:
        if data.get(key) in (None, ""):
            raise PromptError(f"{path}: missing required field '{key}'")
        return data[key]

    fmt = str(data.get("format", "text"))
    if fmt not in FORMATS:
        raise PromptError(f"{path}: field 'format' is {fmt!r}; expected one of {FORMATS}")
    user = str(need("user"))
    slots: dict[str, str] = {}
    if fmt == "json":
        by_domain = need("slots")
        if not isinstance(by_domain, dict) or not by_domain:
            raise PromptError(f"{path}: field 'slots' must map domain -> {{slot: description}}")
        chosen = by_domain.get(domain, by_domain.get(DEFAULT_DOMAIN))
        if chosen is None:
            raise PromptError(
                f"{path}: no slots for domain {domain!r} and no 'default' (domains: {list(by_domain)})"
            )
        if not isinstance(chosen, dict) or not chosen:
            raise PromptError(f"{path}: slots.{domain} must be a non-empty mapping slot -> description")
        slots = {str(slot): str(hint) for slot, hint in chosen.items()}
        if "{schema}" not in user:
            raise PromptError(f"{path}: a json prompt's 'user' text must contain {{schema}}")
    return PromptSpec(
        name=str(need("name")),
        version=str(need("version")),
        format=fmt,
        user=user,
        context=str(data.get("context") or ""),
        domain=domain,
        path=path,
        slots=slots,
        min_words=int(data.get("min_words", 5)),
        min_filled=float(data.get("min_filled", 0.5)),
        digest=digest,
    )


def check_free_text(raw: str | None, min_words: int = 5) -> str:
    """The cleaned answer, or OutputRejected('empty_output' | 'degenerate_output')."""
    text = " ".join((raw or "").split())
    if not text:
        raise OutputRejected("empty_output", "the model returned no text")
    words = re.findall(r"\w+", text.lower())
    if len(words) < min_words:
        raise OutputRejected("degenerate_output", f"{len(words)} words (< {min_words}): {text[:80]!r}")
    if len(words) >= 20 and len(set(words)) / len(words) < 0.25:
        raise OutputRejected(
            "degenerate_output", f"repetitive: {len(set(words))} distinct of {len(words)} words"
        )
    return text


def extract_json_object(raw: str) -> Any:
    """The first JSON value in ``raw``, tolerating code fences and text around it."""
    text = raw.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, flags=re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    start = text.find("{")
    if start < 0:
        raise OutputRejected("invalid_json", f"no JSON object in the answer: {raw[:80]!r}")
    try:
        value, _ = json.JSONDecoder().raw_decode(text[start:])
    except json.JSONDecodeError as error:
        raise OutputRejected("invalid_json", f"{error.msg} at char {error.pos}: {raw[:80]!r}") from error
    return value


def parse_structured(
    raw: str | None, slots: dict[str, str], min_filled: float = 0.5
) -> tuple[str, dict[str, Any]]:
    """Validate a JSON answer against ``slots``; returns (text rendering, normalised fields)."""
    if not (raw or "").strip():
        raise OutputRejected("empty_output", "the model returned no text")
    value = extract_json_object(raw or "")
    if not isinstance(value, dict):
        raise OutputRejected("invalid_json", f"expected a JSON object, got {type(value).__name__}")
    lowered = {str(key).strip().lower(): item for key, item in value.items()}
    missing = [slot for slot in slots if slot.lower() not in lowered]
    if missing:
        raise OutputRejected("schema_mismatch", f"missing slots {missing} (got {list(value)[:10]})")
    fields: dict[str, Any] = {}
    for slot in slots:
        item = lowered[slot.lower()]
        if isinstance(item, (list, tuple)):
            if not all(isinstance(part, (str, int, float)) for part in item):
                raise OutputRejected("schema_mismatch", f"slot {slot!r}: list of non-text values")
            fields[slot] = [" ".join(str(part).split()) for part in item if str(part).strip()]
        elif isinstance(item, (str, int, float)) or item is None:
            fields[slot] = " ".join(str(item if item is not None else "").split())
        else:
            raise OutputRejected("schema_mismatch", f"slot {slot!r}: {type(item).__name__} is not text")
    filled = [slot for slot in slots if _is_filled(fields[slot])]
    if len(filled) < max(1, min_filled * len(slots)):
        raise OutputRejected(
            "degenerate_output", f"only {len(filled)}/{len(slots)} slots have a value ({filled})"
        )
    return render_fields(fields), fields


def _is_filled(value: Any) -> bool:
    parts = value if isinstance(value, list) else [value]
    return any(str(part).strip().lower() not in _UNKNOWN for part in parts)


def render_fields(fields: dict[str, Any]) -> str:
    """``"Category: sneakers. Style: sporty, minimal. ..."``; unknown slots are left out."""
    sentences = []
    for slot, value in fields.items():
        parts = value if isinstance(value, list) else [value]
        parts = [str(part) for part in parts if str(part).strip().lower() not in _UNKNOWN]
        if parts:
            label = slot.replace("_", " ").capitalize()
            sentences.append(f"{label}: {', '.join(parts).rstrip('.')}.")
    return " ".join(sentences)
