"""The openai grounding backend against a local server with a fixed latency: does throughput scale
with the configured concurrency?

    python benchmarks/bench_openai_backend.py [--latency 0.2] [--levels 1 4 16 32 64] [--per-worker 8]
    python benchmarks/bench_openai_backend.py --latency 1 --levels 128 256      # fleet-scale targets
    python benchmarks/bench_openai_backend.py --latency 0.2 --levels 64 128

Starts the OpenAI-compatible stub (``grounding/backends/openai_stub.py``) on 127.0.0.1 with a
fixed per-request latency, then for each concurrency level runs the whole grounding pipeline
(``run_grounding``: image hashing, decoding, JPEG + base64 encoding, HTTP, answer validation,
SQLite commits) over ``level * per-worker`` fresh items (``--image-size`` px JPEGs) and prints
sustained requests/s next to the ideal ``concurrency / latency`` (target: >= 80% of it), the
client's CPU time per request (1000 / that = the most requests/s one core can drive) and the stub's
own CPU time per request. The stub runs in its own process (as a real server would); on a 2-core
machine they share the CPUs, so a level that misses its target can be attributed to one side.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from recbole_vlm4rec.grounding.backends.openai_compatible import OpenAICompatibleBackend  # noqa: E402
from recbole_vlm4rec.grounding.backends.openai_stub import StubServer  # noqa: E402
from recbole_vlm4rec.grounding.items import GroundingItem  # noqa: E402
from recbole_vlm4rec.grounding.prompts import load_prompt  # noqa: E402
from recbole_vlm4rec.grounding.run import run_grounding  # noqa: E402
from recbole_vlm4rec.grounding.store import DescriptionStore  # noqa: E402


def write_images(folder: Path, count: int, size: int) -> list[GroundingItem]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    items = []
    for index in range(count):
        # smooth colour field + mild noise: compresses like a product photo, not like pure noise
        ramp = np.linspace(0, 1, size)[None, :, None] * rng.integers(60, 255, size=(1, 1, 3))
        noise = rng.normal(0, 6, size=(size, size, 3))
        pixels = np.clip(ramp + ramp.transpose(1, 0, 2) / 2 + noise, 0, 255).astype(np.uint8)
        path = folder / f"{index}.jpg"
        Image.fromarray(pixels).save(path, quality=85)
        items.append(GroundingItem(f"item{index:05d}", str(path), ""))
    return items


def serve(latency: float, control) -> None:
    """The stub in this process; answers "cpu" on ``control`` with its CPU seconds so far."""
    with StubServer(latency=latency) as server:
        control.send(server.base_url)
        while control.recv() == "cpu":
            control.send(time.process_time())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--per-worker", type=int, default=8, help="requests per worker at each level")
    parser.add_argument("--image-size", type=int, default=256)
    args = parser.parse_args()

    prompt = load_prompt("preference")
    control, stub_end = multiprocessing.Pipe()
    server_process = multiprocessing.Process(target=serve, args=(args.latency, stub_end), daemon=True)
    server_process.start()
    base_url = control.recv()

    def stub_cpu() -> float:
        control.send("cpu")
        return control.recv()

    with tempfile.TemporaryDirectory() as tmp:
        all_items = write_images(Path(tmp) / "img", max(args.levels) * args.per_worker, args.image_size)
        print(f"stub latency {args.latency * 1000:.0f} ms, {args.image_size}px JPEGs, {os.cpu_count()} CPUs "
              f"(load average {os.getloadavg()[0]:.1f}); whole pipeline per level, fresh cache each time")
        print(f"{'concurrency':>11} {'requests':>8} {'seconds':>8} {'req/s':>8} {'ideal':>8} {'share':>7} "
              f"{'client CPU ms/req':>18} {'stub CPU ms/req':>16}")
        for level in args.levels:
            items = all_items[: level * args.per_worker]
            backend = OpenAICompatibleBackend(model="stub", base_url=base_url, concurrency=level)
            cpu_start, stub_start = time.process_time(), stub_cpu()
            with DescriptionStore(Path(tmp) / f"c{level}.sqlite") as store:
                summary = run_grounding(items, prompt, backend, store, Path(tmp) / f"c{level}.jsonl",
                                        progress=False)
            cpu_ms = (time.process_time() - cpu_start) * 1000 / len(items)
            stub_ms = (stub_cpu() - stub_start) * 1000 / len(items)
            backend.close()
            assert summary.described == len(items), summary.format()
            rate = len(items) / summary.describe_seconds
            ideal = level / args.latency
            print(f"{level:>11} {len(items):>8} {summary.describe_seconds:>8.2f} {rate:>8.1f} "
                  f"{ideal:>8.1f} {rate / ideal:>6.0%} {cpu_ms:>18.2f} {stub_ms:>16.2f}")
    control.send("stop")
    server_process.join(timeout=10)
    return 0


if __name__ == "__main__":
    sys.exit(main())
