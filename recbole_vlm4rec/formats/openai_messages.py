"""What goes into and comes out of an OpenAI-compatible request, for the client
(``formats/openai_client.py``) and its callers: base URL lists, the user turn with its image as a
data URL, the server's error text, ``Retry-After``."""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import time
import urllib.parse
from pathlib import Path
from typing import Any, Sequence

DEFAULT_BASE_URL = "http://localhost:8000/v1"  # vLLM's default; $OPENAI_BASE_URL overrides


def base_urls(value: str | Sequence[str] | None) -> list[str]:
    """Endpoint base URLs from a URL, a comma-separated list, or a list of either (default:
    ``$OPENAI_BASE_URL``, else vLLM's localhost); ValueError naming a URL that is not http(s)."""
    given = [value] if isinstance(value, str) else list(value or [])
    given = given or [os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL]
    urls: list[str] = []
    for entry in given:
        for url in str(entry).split(","):
            url = url.strip().rstrip("/")
            if not url:
                continue
            parts = urllib.parse.urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"base URL {url!r}: expected http(s)://host[:port]/path, e.g. "
                                 "http://localhost:8000/v1")
            if url not in urls:
                urls.append(url)
    if not urls:
        raise ValueError("no base URL given")
    return urls


def read_base_urls(path: str | Path) -> list[str]:
    """One base URL per line (blank lines and ``#`` comments ignored); ValueError naming
    ``file:line`` for a line that is not an http(s) URL."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the base URL list ({error})") from error
    urls: list[str] = []
    for number, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                urls += base_urls(line)
            except ValueError as error:
                raise ValueError(f"{path}:{number}: {error}") from None
    if not urls:
        raise ValueError(f"{path}: no base URL in it (one per line)")
    return urls


def image_data_url(image: Any, image_bytes: bytes | None, jpeg_quality: int = 90) -> str:
    """A base64 data URL: ``image_bytes`` as they are when given (an original JPEG/PNG: no
    re-encoding cost, no generation loss), else the PIL ``image`` as a JPEG."""
    if image_bytes:
        data, mime = image_bytes, "png" if image_bytes[:3] == b"\x89PN" else "jpeg"
    else:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=jpeg_quality)
        data, mime = buffer.getvalue(), "jpeg"
    return f"data:image/{mime};base64," + base64.b64encode(data).decode("ascii")


def user_message(prompt: str, image: Any, image_bytes: bytes | None = None,
                 jpeg_quality: int = 90) -> list[dict[str, Any]]:
    """One user turn: the prompt as a text part, then the image as a data URL part."""
    return [{"role": "user", "content": [
        {"type": "text", "text": prompt},
        {"type": "image_url", "image_url": {"url": image_data_url(image, image_bytes, jpeg_quality)}},
    ]}]


def error_message(content: bytes, reason: str = "") -> str:
    """The server's own words: ``error.message`` of a JSON error body, else the body's start,
    else the status line's reason."""
    try:
        error = json.loads(content).get("error")
        message = error.get("message") if isinstance(error, dict) else error
    except (ValueError, AttributeError):
        message = None
    return str(message or content[:200].decode("utf-8", "replace") or reason)


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now (delta-seconds or an HTTP date; a past date is 0), None
    when absent or unparsable. Uncapped: the caller caps it."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
