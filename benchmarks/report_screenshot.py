"""Screenshot a benchmark's report.html (or a page `vlm4rec serve` serves) in headless Chromium
for the docs.

    vlm4rec bench benchmarks/report_screenshot.yaml --out results/benchmarks/posters-quick
    python benchmarks/report_screenshot.py results/benchmarks/posters-quick/report.html \\
        docs/images/report-screenshot.png --bands 0:560,1600:2700 --scale 0.75
    python benchmarks/report_screenshot.py "http://127.0.0.1:8000/#/item/ml-100k-posters/7" \\
        docs/images/explorer-item.png --bands 0:1000 --scale 0.75

Renders the page at 1280 px wide, keeps the given horizontal pixel bands (top:bottom, in page
pixels; several bands are stacked with a dashed line where the page was cut), scales the result and
saves it as a 128-colour PNG (small enough for a README). ``--full OUT.png`` also saves the whole
page unscaled, to choose the bands. Refuses a page whose text names a folder of this machine (the
picture goes into the docs). Needs ``chromium`` on PATH.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from PIL import Image, ImageDraw

WIDTH = 1280
# Folders of one machine, as tests/test_docs.py refuses them in committed docs.
MACHINE_PATH = re.compile(r"(?<![\w.-])/(?:work|tmp|root|home|Users)\b(?:/[\w.-]+)?")


def machine_paths(page: str) -> list[str]:
    """Machine folders in the page's text (embedded images left out)."""
    text = re.sub(r"data:image/[a-z]+;base64,[A-Za-z0-9+/=]+", "", page)
    return sorted({match.group(0) + text[match.end():match.end() + 40].split("<")[0]
                   for match in MACHINE_PATH.finditer(text)})


def render(page: str, height: int) -> Image.Image:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: chromium not found on PATH (apt-get install -y chromium)")
    with tempfile.TemporaryDirectory() as folder:
        shot = Path(folder) / "page.png"
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                        "--disable-background-networking", "--disable-component-update",
                        "--disable-sync", "--no-first-run", f"--user-data-dir={folder}/profile",
                        f"--screenshot={shot}", f"--window-size={WIDTH},{height}",
                        "--virtual-time-budget=20000",  # a served page fetches before it draws
                        page if page.startswith(("http://", "https://"))
                        else Path(page).resolve().as_uri()],
                       check=True, capture_output=True, timeout=180)
        return Image.open(shot).convert("RGB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("page", help="a report.html, or a URL")
    parser.add_argument("out", type=Path)
    parser.add_argument("--bands", default="0:1400", help="top:bottom[,top:bottom...] in pixels")
    parser.add_argument("--scale", type=float, default=0.75)
    parser.add_argument("--full", type=Path, help="also save the whole page here (unscaled)")
    args = parser.parse_args()
    served = args.page.startswith(("http://", "https://"))  # the explorer shows no folders
    found = [] if served else machine_paths(Path(args.page).read_text(encoding="utf-8"))
    if found:
        raise SystemExit(f"error: {args.page} names folders of this machine: {found[:3]}; "
                         "rebuild it with `vlm4rec report` from this checkout")
    bands = [tuple(int(v) for v in band.split(":")) for band in args.bands.split(",")]
    page = render(args.page, max([bottom for _, bottom in bands] + [6000 if args.full else 0]))
    if args.full:
        page.save(args.full)
    width, gap = int(WIDTH * args.scale), 14
    parts = [page.crop((0, top, WIDTH, bottom)).resize(
        (width, int((bottom - top) * args.scale)), Image.Resampling.LANCZOS) for top, bottom in bands]
    image = Image.new("RGB", (width, sum(p.height for p in parts) + gap * (len(parts) - 1)), "white")
    y = 0
    for index, part in enumerate(parts):
        if index:  # a dashed line says the page was cut here
            draw = ImageDraw.Draw(image)
            for x in range(0, width, 12):
                draw.line([(x, y + gap // 2), (x + 6, y + gap // 2)], fill=(150, 150, 150), width=2)
            y += gap
        image.paste(part, (0, y))
        y += part.height
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=128, method=Image.Quantize.MEDIANCUT,
                   dither=Image.Dither.NONE).save(args.out, optimize=True)
    print(f"{args.out}: {image.width}x{image.height}, {args.out.stat().st_size // 1024} KB")


if __name__ == "__main__":
    main()
