"""Fetch item images by URL into ``dataset/<name>/images/``: bounded, retried, resumable, checked.

Each image is saved as ``images/<item file stem>.<jpg|png|gif|webp>`` (extension from the decoded
format), written to a temp file and renamed only after Pillow has verified it, so a file that
exists is complete and valid: a second run skips it (resume). Transient failures (timeouts,
connection errors, HTTP 429/5xx) are retried with exponential backoff; 4xx, oversized bodies and
undecodable or unsupported images are not. Every failure is returned with its reason; the caller
writes them to ``image_failures.tsv`` and counts them on the dataset card.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from recbole_vlm4rec.formats.files import atomic_write_bytes

FORMATS = {"JPEG": ".jpg", "PNG": ".png", "GIF": ".gif", "WEBP": ".webp"}
RETRY_STATUS = {408, 429, 500, 502, 503, 504}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


@dataclass
class DownloadReport:
    saved: dict[str, str] = field(default_factory=dict)  # token -> path relative to dataset
    failures: dict[str, tuple[str, str]] = field(default_factory=dict)  # token -> (url, reason)
    reused: int = 0  # found from an earlier run

    def failures_tsv(self) -> str:
        lines = ["item_id\turl\treason"]
        lines += [f"{t}\t{u}\t{r}" for t, (u, r) in sorted(self.failures.items())]
        return "\n".join(lines) + "\n"


def file_stem(token: str) -> str:
    """A filesystem-safe stem for an item token (hash suffix when characters were replaced)."""
    safe = _UNSAFE.sub("_", token)
    if safe != token or safe.startswith("."):
        safe = f"{safe}-{hashlib.sha1(token.encode()).hexdigest()[:8]}"
    return safe


def existing_image(folder: Path, token: str) -> Path | None:
    stem = file_stem(token)
    for suffix in FORMATS.values():
        if (folder / f"{stem}{suffix}").is_file():
            return folder / f"{stem}{suffix}"
    return None


def check_image(body: bytes, max_pixels: int = 50_000_000) -> str:
    """The file extension for a valid image body; raises ValueError naming what is wrong.

    Validation is the one every pixel stage uses (``recbole_vlm4rec.formats.images.load_image``:
    a full decode, so truncated files fail here), plus a format this project saves.
    """
    from PIL import Image

    from recbole_vlm4rec.formats.images import REASONS, ImageError, load_image

    try:
        load_image(body, max_side=None, max_pixels=max_pixels)
    except ImageError as error:
        raise ValueError(f"{error.reason}: {error.detail or REASONS[error.reason]}") from None
    with Image.open(io.BytesIO(body)) as image:
        image_format = image.format
    if image_format not in FORMATS:
        raise ValueError(f"unsupported image format {image_format}")
    return FORMATS[image_format]


async def _fetch(client, url: str, max_bytes: int, retries: int, backoff: float) -> bytes:
    import httpx

    last = "no attempt"
    for attempt in range(retries + 1):
        if attempt:
            await asyncio.sleep(backoff * 2 ** (attempt - 1))
        try:
            async with client.stream("GET", url) as response:
                if response.status_code in RETRY_STATUS:
                    last = f"HTTP {response.status_code}"
                    continue
                if response.status_code != 200:
                    raise ValueError(f"HTTP {response.status_code}")
                declared = int(response.headers.get("content-length") or 0)
                if declared > max_bytes:
                    raise ValueError(f"too large: {declared} bytes > {max_bytes}")
                chunks, size = [], 0
                async for chunk in response.aiter_bytes():
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"too large: over {max_bytes} bytes")
                    chunks.append(chunk)
                return b"".join(chunks)
        except httpx.TransportError as error:  # timeouts, refused/reset connections
            last = f"{type(error).__name__}"
    raise ValueError(f"gave up after {retries + 1} attempts: {last}")


def _save(folder: Path, token: str, body: bytes, suffix: str) -> Path:
    path = folder / f"{file_stem(token)}{suffix}"
    return atomic_write_bytes(path, body)


async def _download_all(urls: dict[str, str], folder: Path, report: DownloadReport,
                        concurrency: int, retries: int, timeout: float, max_bytes: int,
                        backoff: float) -> None:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    progress = tqdm(total=len(urls), desc="downloading images", unit=" img", mininterval=1.0,
                    disable=None)

    async def one(client, token: str, url: str) -> None:
        async with limit:
            try:
                body = await _fetch(client, url, max_bytes, retries, backoff)
                suffix = check_image(body)
                path = _save(folder, token, body, suffix)
                report.saved[token] = f"{folder.name}/{path.name}"
            except ValueError as error:
                report.failures[token] = (url, str(error))
            finally:
                progress.update()

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits, follow_redirects=True,
                                 trust_env=False,
                                 headers={"User-Agent": "recbole-vlm4rec/0.1"}) as client:
        await asyncio.gather(*(one(client, t, u) for t, u in sorted(urls.items())))
    progress.close()


def download_images(urls: dict[str, str], folder: Path, concurrency: int = 8, retries: int = 3,
                    timeout: float = 20.0, max_bytes: int = 10_000_000,
                    backoff: float = 0.5) -> DownloadReport:
    """Fetch ``token -> url`` into ``folder``; skips tokens whose image is already there."""
    folder.mkdir(parents=True, exist_ok=True)
    report = DownloadReport()
    pending = {}
    for token, url in urls.items():
        found = existing_image(folder, token)
        if found is not None:
            report.saved[token] = f"{folder.name}/{found.name}"
            report.reused += 1
        elif not url.startswith(("http://", "https://")):
            report.failures[token] = (url, "not an http(s) URL")
        else:
            pending[token] = url
    if pending:
        asyncio.run(_download_all(pending, folder, report, concurrency, retries, timeout,
                                  max_bytes, backoff))
    return report


def localise_images(prepared, dataset_folder: Path, **options) -> DownloadReport:
    """Download the http(s) images of ``prepared.items`` into ``<dataset_folder>/images/`` and
    point the ``image`` column at the saved files; failed items keep their URL (counted, listed
    in ``image_failures.tsv``)."""
    items = prepared.items
    if items is None or "image" not in items.columns:
        return DownloadReport()
    urls = {token: ref for token, ref in zip(items["item_id"], items["image"])
            if str(ref).startswith(("http://", "https://"))}
    report = download_images(urls, Path(dataset_folder) / "images", **options)
    items["image"] = [report.saved.get(token, ref) for token, ref in
                      zip(items["item_id"], items["image"])]
    if report.failures:
        prepared.count("image_download_failures", len(report.failures),
                       "images that could not be fetched or were invalid: the item keeps its "
                       "URL; reasons in image_failures.tsv")
        prepared.extra_files["image_failures.tsv"] = report.failures_tsv()
    return report
