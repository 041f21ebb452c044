"""Every value of every input line checked at the door: the one validation piece of all sources.

The catalogue, MMRec and Amazon readers turn each field into an id, a number, a timestamp, text or
an image reference only through the functions here. A value that cannot be used raises
:class:`BadValue` (its ``key`` names the card counter) or a plain ``ValueError`` (the source's own
"malformed" counter); the reader hands it to :meth:`Problems.refuse` with the ``file:line``, and
the line (or, for item metadata, the one value) is refused, counted on the dataset card with the
first examples. A file where nothing usable remains is refused whole by the source, with one line.

The limits (docs/datasets.md, "Values checked at the door"):

- a line: at most :data:`MAX_LINE_BYTES`; a csv field: at most the csv module's field limit;
- an id (user, item, asin...): a string (or a JSON integer), at most :data:`MAX_ID_CHARS`
  characters after stripping, no control character (C0/C1, DEL, U+2028/U+2029, lone surrogates);
- a number: finite and within float32 (RecBole stores float fields as float32, where ``1e39`` is
  already infinite); a JSON boolean is not a number;
- a timestamp: a number in ``0 .. TIMESTAMP_MAX`` (Unix seconds, or milliseconds up to 2100);
- text: JSON strings, numbers or lists of strings; control characters become spaces, like tabs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from recbole_vlm4rec.data.prepare.prepared import PrepareError, PreparedDataset

MAX_LINE_BYTES = 1 << 20
MAX_ID_CHARS = 256
MAX_REFERENCE_CHARS = 4096  # an image path or URL
TIMESTAMP_MAX = 4_102_444_800_000  # 2100-01-01 in Unix milliseconds
FLOAT32_MAX = 3.4028234663852886e38
MAX_EXAMPLES = 5
MAX_MESSAGE_CHARS = 200

# Card counters of refused values, shared by every source; the malformed-line counters stay per
# source (malformed_lines, malformed_review_lines...).
NON_FINITE = "non_finite_values"
OUT_OF_RANGE = "out_of_range_values"
CONTROL = "control_characters"
OVER_LONG = "over_long_values"
WRONG_TYPE = "wrong_json_types"
REASONS = {
    NON_FINITE: "numbers that are NaN, infinite or beyond float32 (RecBole stores floats as "
                "float32), e.g. 1e400 or a 400-digit integer",
    OUT_OF_RANGE: f"timestamps outside 0 .. {TIMESTAMP_MAX:,} (Unix seconds, or milliseconds up "
                  "to 2100), negative prices, MMRec ids of more than 18 digits",
    CONTROL: "ids or image references containing a control character (NUL, escape, a line "
             "separator...)",
    OVER_LONG: f"lines over {MAX_LINE_BYTES:,} bytes, csv fields over the csv module's limit, ids "
               f"over {MAX_ID_CHARS} characters, image references over {MAX_REFERENCE_CHARS:,}",
    WRONG_TYPE: "JSON values of the wrong type: an object, list or boolean where an id, number "
                "or text belongs",
}
REFUSAL_NOTE = "; the line is skipped, or only the value where an example says (left empty)"

_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_TEXT_BREAKS = re.compile("[\\s\x00-\x1f\x7f-\x9f]+")
_SURROGATE = re.compile("[\ud800-\udfff]")
_MMREC_ID = re.compile(r"[0-9]+")


class BadValue(ValueError):
    """A value refused for a reason with its own card counter (``key``: one of :data:`REASONS`)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


def show(value: Any, limit: int = 40) -> str:
    """A short printable form of a value for messages (never the whole of a huge one)."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", tuple: "a tuple", bool: "a boolean",
             type(None): "null", set: "a set", bytes: "bytes", complex: "a complex number"}
    return names.get(type(value), f"a {type(value).__name__}")


def check_id(value: Any, field: str) -> str:
    """A user/item id as a RecBole token: a string (or a JSON integer), stripped, non-empty,
    short, no control character."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        if value is None:
            raise ValueError(f"empty {field}")
        raise BadValue(WRONG_TYPE, f"{field} is {json_type(value)} ({show(value)}), expected a "
                       "string")
    token = str(value).strip()
    if not token:
        raise ValueError(f"empty {field}")
    if len(token) > MAX_ID_CHARS:
        raise BadValue(OVER_LONG, f"{field} of {len(token):,} characters (at most {MAX_ID_CHARS})")
    _refuse_control(token, field)
    return token


def check_reference(value: Any, field: str) -> str:
    """An image path or URL: a string (empty for none), short, no control character."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadValue(WRONG_TYPE, f"{field} is {json_type(value)} ({show(value)}), expected a "
                       "string")
    reference = value.strip()
    if len(reference) > MAX_REFERENCE_CHARS:
        raise BadValue(OVER_LONG, f"{field} of {len(reference):,} characters (at most "
                       f"{MAX_REFERENCE_CHARS:,})")
    _refuse_control(reference, field)
    return reference


def _refuse_control(text: str, field: str) -> None:
    found = _CONTROL.search(text)
    if found:
        raise BadValue(CONTROL, f"{field} {show(text)} contains control character "
                       f"U+{ord(found.group()):04X}")


def check_number(value: Any, field: str) -> float:
    """A finite float32-sized number, from a JSON number or a numeric string."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BadValue(WRONG_TYPE, f"{field} is {json_type(value)} ({show(value)}), expected a "
                       "number")
    try:
        number = float(value.strip() if isinstance(value, str) else value)
    except OverflowError:  # an integer too large for a float (400 digits)
        raise BadValue(NON_FINITE, f"{field} {show(value)} is too large for a float") from None
    except ValueError:
        raise ValueError(f"{field} {show(value)} is not a number") from None
    if not math.isfinite(number):
        raise BadValue(NON_FINITE, f"{field} {show(value)} is not finite")
    if abs(number) > FLOAT32_MAX:
        raise BadValue(NON_FINITE, f"{field} {show(value)} is beyond float32 (RecBole stores "
                       "floats as float32)")
    return number


def check_timestamp(value: Any, field: str) -> float:
    """A number in ``0 .. TIMESTAMP_MAX``."""
    number = check_number(value, field)
    if not 0 <= number <= TIMESTAMP_MAX:
        raise BadValue(OUT_OF_RANGE, f"{field} {number:g} is outside 0 .. {TIMESTAMP_MAX:,}")
    return number


def check_mmrec_id(value: str, field: str) -> int:
    """An MMRec integer id (a row number): ASCII digits only, at most 18 of them."""
    text = value.strip()
    if not _MMREC_ID.fullmatch(text):
        raise ValueError(f"{field} {show(value)} is not a non-negative integer")
    if len(text) > 18:
        raise BadValue(OUT_OF_RANGE, f"{field} of {len(text):,} digits (MMRec ids are row "
                       "numbers, at most 18 digits)")
    return int(text)


def clean_text(value: Any) -> str:
    """One line of text: tabs, newlines, other control characters and runs of spaces become one
    space (atomic files are TSV), a lone surrogate becomes U+FFFD (not writable as UTF-8)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return _SURROGATE.sub("\ufffd", _TEXT_BREAKS.sub(" ", str(value))).strip()


def json_text(value: Any, field: str) -> str:
    """Item text from a JSON/literal value: a string, a number, or a list of strings (joined by
    spaces); anything else (an object, a boolean, nested lists) is refused."""
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return clean_text(value) if math.isfinite(value) else ""
    if isinstance(value, list) and all(isinstance(part, str) for part in value):
        return clean_text(" ".join(value))
    raise BadValue(WRONG_TYPE, f"{field} is {json_type(value)} ({show(value)}), expected text")


class Refusals:
    """Every counter of refused lines and values of one prepare, by card key."""

    def __init__(self) -> None:
        self.counters: dict[str, Problems] = {}

    def counter(self, key: str, reason: str | None = None) -> Problems:
        """The counter ``key`` (created on first use; shared value keys get their reason here)."""
        if key not in self.counters:
            if reason is None:
                reason = REASONS[key] + REFUSAL_NOTE
            self.counters[key] = Problems(key, reason, refusals=self)
        return self.counters[key]

    def examples(self, prefix: str = "") -> list[str]:
        """The recorded examples (of every counter) that start with ``prefix``, e.g. a path."""
        return [example for problems in self.counters.values() for example in problems.examples
                if example.startswith(prefix)]

    def record(self, prepared: PreparedDataset) -> None:
        for problems in self.counters.values():
            problems.record(prepared)


@dataclass
class Problems:
    """Counted, located problems of one kind (e.g. malformed lines)."""

    key: str
    reason: str
    count: int = 0
    examples: list[str] = field(default_factory=list)
    refusals: Refusals | None = field(default=None, repr=False)

    def add(self, where: str, message: str) -> None:
        self.count += 1
        if len(self.examples) < MAX_EXAMPLES:
            if len(message) > MAX_MESSAGE_CHARS:
                message = message[:MAX_MESSAGE_CHARS] + "..."
            self.examples.append(f"{where}: {message}")

    def refuse(self, where: str, error: Exception, note: str = "") -> None:
        """Count ``error`` at ``where``: a :class:`BadValue` under its own key (in the same
        :class:`Refusals`), anything else here. ``note`` says what became of it."""
        target = self
        if isinstance(error, BadValue) and self.refusals is not None:
            target = self.refusals.counter(error.key)
        target.add(where, f"{error}{note}")

    def record(self, prepared: PreparedDataset) -> None:
        """Put the count (with the first examples) on the dataset card; nothing when zero."""
        if self.count:
            examples = "; ".join(self.examples)
            prepared.count(self.key, self.count, f"{self.reason} (e.g. {examples})")


def nothing_usable(path: Any, what: str, problems: Problems) -> PrepareError:
    """The one-line error for a file none of whose lines could be used, with the first reasons."""
    prefix = str(path)
    examples = (problems.refusals.examples(prefix) if problems.refusals is not None
                else problems.examples)[:MAX_EXAMPLES]
    shown = "; ".join(f"line {example[len(prefix) + 1:]}" if example.startswith(prefix + ":")
                      else example for example in examples)
    return PrepareError(f"{path}: no valid {what}" + (f" ({shown})" if shown else ""))
