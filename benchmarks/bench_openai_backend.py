"""The openai grounding backend against local servers with a fixed latency: does throughput scale
with the configured concurrency, and with the number of servers?

    python benchmarks/bench_openai_backend.py [--latency 0.2] [--levels 1 4 16 32 64] [--per-worker 8]
    python benchmarks/bench_openai_backend.py --latency 1 --levels 128 256      # fleet-scale targets
    python benchmarks/bench_openai_backend.py --latency 0.2 --levels 64 128 --per-worker 24  # sustained
    python benchmarks/bench_openai_backend.py --latency 0.2 --capacity 16 --servers 1 2 \
        --levels 32 --per-worker 16 --repeats 3                               # a fleet of two
    python benchmarks/bench_openai_backend.py --latency 0.2 --levels 64 128 --per-worker 24 \
        --transports http11 aiohttp --repeats 3                               # the two transports

Starts the OpenAI-compatible stub (``grounding/backends/openai_stub.py``) on 127.0.0.1, each in
its own process (as a real server runs), with a fixed per-request latency and, with
``--capacity C``, at most C requests worked on at once per server (a real server's batch: one
server then answers at most C / latency a second). For each concurrency level (and, with
``--servers``, each number of servers, and with ``--transports``, each HTTP transport of
``formats/openai_transport.py``, interleaved) it runs the whole grounding pipeline
(``run_grounding``: image hashing, decoding, JPEG + base64 encoding, HTTP, answer validation,
SQLite commits) over ``level * per-worker`` fresh items (``--image-size`` px JPEGs) and prints
sustained requests/s next to the ideal ``min(concurrency, servers x capacity) / latency`` (target:
>= 80% of it), the client's CPU time per request (1000 / that = the most requests/s one core can
drive) and the servers' CPU time per request. On a 2-core machine client and servers share the
CPUs, so a level that misses its target can be attributed to one side. With several server
counts (or transports) it ends with each one's rate as a multiple of the first's, per repeat.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from recbole_vlm4rec.formats.openai_transport import TRANSPORTS  # noqa: E402
from recbole_vlm4rec.grounding.backends.openai_compatible import OpenAICompatibleBackend  # noqa: E402
from recbole_vlm4rec.grounding.backends.openai_stub import StubProcess  # noqa: E402
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


def run_level(items: list[GroundingItem], urls: list[str], stubs: list[StubProcess], level: int,
              transport: str, folder: Path, name: str) -> tuple[float, float, float]:
    """One pipeline run: (requests/s, client CPU ms/request, servers' CPU ms/request)."""
    prompt = load_prompt("preference")
    backend = OpenAICompatibleBackend(model="stub", base_url=urls, concurrency=level, transport=transport)
    cpu_start, stub_start = time.process_time(), sum(stub.cpu_seconds() for stub in stubs)
    with DescriptionStore(folder / f"{name}.sqlite") as store:
        summary = run_grounding(items, prompt, backend, store, folder / f"{name}.jsonl", progress=False)
    cpu_ms = (time.process_time() - cpu_start) * 1000 / len(items)
    stub_ms = (sum(stub.cpu_seconds() for stub in stubs) - stub_start) * 1000 / len(items)
    backend.close()
    assert summary.described == len(items), summary.format()
    return len(items) / summary.describe_seconds, cpu_ms, stub_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--levels", type=int, nargs="+", default=[1, 4, 16, 32, 64])
    parser.add_argument("--per-worker", type=int, default=8, help="requests per worker at each level")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--servers", type=int, nargs="+", default=[1], help="server counts to compare")
    parser.add_argument("--capacity", type=int, help="requests each server works on at once (default: no bound)")
    parser.add_argument("--transports", nargs="+", default=["http11"], choices=TRANSPORTS,
                        help="HTTP transports to compare (formats/openai_transport.py)")
    parser.add_argument("--repeats", type=int, default=1,
                        help="rounds over every (level, servers, transport), interleaved; the order "
                        "of servers and transports alternates between rounds")
    args = parser.parse_args()

    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        stubs = [stack.enter_context(StubProcess(latency=args.latency, capacity=args.capacity))
                 for _ in range(max(args.servers))]
        all_items = write_images(Path(tmp) / "img", max(args.levels) * args.per_worker, args.image_size)
        capacity = f", capacity {args.capacity} per server" if args.capacity else ""
        print(f"stub latency {args.latency * 1000:.0f} ms{capacity}, {args.image_size}px JPEGs, "
              f"{os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}); whole pipeline per "
              "level, fresh cache each time")
        print(f"{'transport':>9} {'servers':>7} {'concurrency':>11} {'requests':>8} {'req/s':>8} {'ideal':>8} "
              f"{'share':>6} {'client CPU ms/req':>18} {'stub CPU ms/req':>16}")
        sides = [(transport, count) for transport in args.transports for count in args.servers]
        rates: dict[tuple[int, str, int], list[float]] = {}
        for repeat in range(args.repeats):
            for level in args.levels:
                for transport, count in sides if repeat % 2 == 0 else sides[::-1]:
                    items = all_items[: level * args.per_worker]
                    rate, cpu_ms, stub_ms = run_level(items, [stub.base_url for stub in stubs[:count]],
                                                      stubs[:count], level, transport, Path(tmp),
                                                      f"r{repeat}-c{level}-s{count}-{transport}")
                    rates.setdefault((level, transport, count), []).append(rate)
                    busy = min(level, count * args.capacity) if args.capacity else level
                    ideal = busy / args.latency
                    print(f"{transport:>9} {count:>7} {level:>11} {len(items):>8} {rate:>8.1f} {ideal:>8.1f} "
                          f"{rate / ideal:>6.0%} {cpu_ms:>18.2f} {stub_ms:>16.2f}", flush=True)
        for level in args.levels if len(sides) > 1 else []:
            for side in sides[1:]:
                ratios = ", ".join(f"{other / first:.2f}" for other, first in
                                   zip(rates[(level, *side)], rates[(level, *sides[0])]))
                print(f"concurrency {level}: {side[0]} x {side[1]} servers / {sides[0][0]} x "
                      f"{sides[0][1]}: {ratios} (per repeat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
