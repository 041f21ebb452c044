"""`vlm4rec serve` over HTTP on loopback: startup to the first answer, and latency under load.

    python benchmarks/bench_serve.py --posters bundles/posters-vlm bundles/posters-visual \\
        bundles/posters-text [--items 100000] [--users 10000] [--clients 1,16,64] \\
        [--requests 300] [--seconds 15] [--workdir DIR]

Startup (a fresh `vlm4rec serve` process on the text bundle, ``--startup-runs`` times, median):
seconds from spawning the process to the first 200 of /healthz, of /recommend?user= and of
/search?q= (the text query needs the encoder), and the CPU seconds the process had used by then
(on a shared machine wall time mostly measures the other jobs; CPU time is what wall time would
be on an idle core, startup being single-threaded). Beside it, what a first text answer cost
before this service: importing sentence-transformers, loading MiniLM and encoding one query in a
fresh process (the path `vlm4rec recommend --text` took), and `vlm4rec recommend --text` end to
end now.

Load: for each served set of bundles, a separate server process (`--threads 1`) and, in this
process, N asyncio clients (httpx, one connection each) sending requests back to back; each cell
stops after ``--requests`` answers or ``--seconds``, whichever comes first (after 20 warm-up
requests). Reported: answers, p50 / p99 latency (ms, client side: includes HTTP and JSON),
throughput (answers per second of wall time), the server process's CPU milliseconds per answer
(what one answer costs, whatever else runs on the machine: an idle core would serve about 1000 /
that many per second), failed requests (printed), and requests resent once because the server had
closed their kept-alive connection (uvicorn closes one idle for 5 s; on an overloaded machine a
starved client can leave it that long).

  recommend  GET /recommend?user=U&k=10          a random known user (explanations on)
  similar    GET /similar/I?k=10                 a random item, neighbours under every feature
                                                 of its dataset plus co-interaction counts
  search     GET /search?q=...&k=10              a random phrase, embedded by the bundle's encoder

Served sets: ml-100k-posters (the ``--posters`` bundles: one per feature; recommend on the first,
search on the first that can embed text) and a synthetic catalogue of ``--items`` items x 384
float32 (clustered unit vectors, ``--users`` users with 10-50 training items each, the MiniLM
encoder recorded so /search embeds real queries), once with a flat index and once with HNSW.
Client and server share the machine: on 2 cores the 64-client figures measure contention too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's package

PHRASES = ["space opera with robots", "a cosy romantic comedy in paris", "dark crime thriller",
           "animated film for children", "war drama in the jungle", "horror in a haunted house",
           "musical with singing and dancing", "western with cowboys", "documentary about music",
           "a funny road trip with friends", "detective mystery", "epic fantasy adventure"]


def synthetic_bundle(folder: Path, n_items: int, n_users: int, index: str) -> Path:
    """A profile bundle of ``n_items`` clustered unit vectors (384-d, MiniLM recorded)."""
    from recbole_vlm4rec.encoding.text import encoder_fingerprint
    from recbole_vlm4rec.serving.bundle import write_profile_arrays

    if (folder / "bundle.json").is_file():
        return folder
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(512, 384)).astype(np.float32)
    vectors = centres[rng.integers(0, 512, n_items)] + rng.normal(
        scale=0.6, size=(n_items, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    histories = [np.sort(rng.choice(n_items, size=rng.integers(10, 51), replace=False))
                 for _ in range(n_users)]
    meta = {"model": "VLM4Rec", "dataset": f"synthetic-{index}", "item_feature": "synthetic",
            "features": ["synthetic"], "train_items": histories,
            "encoder": {"name": "all-MiniLM-L6-v2",
                        "fingerprint": encoder_fingerprint("all-MiniLM-L6-v2")}}
    started = time.perf_counter()
    write_profile_arrays(folder, [f"item{i}" for i in range(n_items)], vectors,
                         np.ones(n_items, bool), [f"user{u}" for u in range(n_users)], histories,
                         histories, meta, index_kind=index)
    print(f"  wrote {folder.name}: {n_items} items, {n_users} users, {index} index, "
          f"{time.perf_counter() - started:.0f} s", flush=True)
    return folder


def start_server(bundles: list[Path], env: dict[str, str],
                 log: Path) -> tuple[subprocess.Popen, str, float]:
    """A `vlm4rec serve` process on a free port (its stderr to ``log``); returns it, its URL and
    its start time."""
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "recbole_vlm4rec.cli", "serve",
                                *map(str, bundles), "--port", "0", "--threads", "1"],
                               stdout=subprocess.PIPE, stderr=open(log, "w"), text=True, env=env)
    while True:
        line = process.stdout.readline()
        if not line:
            raise SystemExit(f"server did not start: {log.read_text()}")
        if line.startswith("serving "):
            return process, line.split(" on ", 1)[1].split("/ ", 1)[0], started


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a live process has used (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def first_answer(url: str, path: str, started: float, pid: int) -> tuple[float, float]:
    """Wall seconds since ``started`` and CPU seconds of ``pid`` at the first 200 of ``path``."""
    import httpx

    while True:
        try:
            if httpx.get(url + path, timeout=60).status_code == 200:
                return time.perf_counter() - started, cpu_seconds(pid)
        except httpx.TransportError:
            time.sleep(0.01)


def timed_run(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall and CPU (user + system) seconds of a child process run to its end."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(command, check=True, env=env, capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(bundle: Path, user: str, runs: int, env: dict[str, str]) -> None:
    rows: dict[str, list[tuple[float, float]]] = {
        "`vlm4rec serve`: GET /healthz": [], f"`vlm4rec serve`: GET /recommend?user={user}": [],
        "`vlm4rec serve`: GET /search?q=space+opera": []}
    paths = ["/healthz", f"/recommend?user={user}", "/search?q=space+opera"]
    for _ in range(runs):
        started = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-m", "recbole_vlm4rec.cli", "serve",
                                    str(bundle), "--port", "0"], stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, text=True, env=env)
        line = process.stdout.readline()
        while line and not line.startswith("serving "):
            line = process.stdout.readline()
        if not line:
            raise SystemExit(f"server did not start: {process.stderr.read()}")
        url = line.split(" on ", 1)[1].split("/ ", 1)[0]
        for label, path in zip(rows, paths):  # in order: each first answer after the one before
            rows[label].append(first_answer(url, path, started, process.pid))
        stop(process)
    code = ("from recbole_vlm4rec.encoding.text import TextEncoder; "
            "TextEncoder().encode(['space opera'], show_progress=False)")
    rows["before: import sentence-transformers + load MiniLM + encode one query"] = [
        timed_run([sys.executable, "-c", code], env) for _ in range(runs)]
    rows["`vlm4rec recommend --text` (one process per question)"] = [
        timed_run([sys.executable, "-m", "recbole_vlm4rec.cli", "recommend", str(bundle),
                   "--text", "space opera", "-k", "5"], env) for _ in range(runs)]
    print(f"\nstartup, text bundle {bundle.name} (median of {runs}; wall: seconds from spawning "
          "the process; CPU: user + system seconds it used by then, what wall would be on an "
          "idle core)", flush=True)
    print("| first answer | wall s | CPU s |\n|---|---|---|")
    for label, pairs in rows.items():
        print(f"| {label} | {statistics.median(w for w, _ in pairs):.2f} | "
              f"{statistics.median(c for _, c in pairs):.2f} |", flush=True)


async def load_cell(url: str, paths: list[str], clients: int, requests: int,
                    seconds: float, pid: int) -> dict[str, float]:
    import httpx

    latencies: list[float] = []
    errors: list[str] = []
    retried = [0]
    rng = np.random.default_rng(clients)
    deadline = [0.0]

    async def client(http: httpx.AsyncClient, budget: list[int]) -> None:
        while budget[0] > 0 and time.perf_counter() < deadline[0]:
            budget[0] -= 1
            path = paths[int(rng.integers(len(paths)))]
            started = time.perf_counter()
            try:
                try:
                    answer = await http.get(path)
                except (httpx.ReadError, httpx.RemoteProtocolError):
                    # a kept-alive connection the server closed after 5 idle seconds (a starved
                    # client): resent once on a new one, as browsers do, and counted
                    retried[0] += 1
                    answer = await http.get(path)
            except httpx.TransportError as error:  # a failed request
                errors.append(f"{type(error).__name__} {path}")
                continue
            latencies.append(time.perf_counter() - started)
            if answer.status_code != 200:
                errors.append(f"{answer.status_code} {path}: {answer.text[:120]}")

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    # warm-up and measurement on separate clients: a connection left idle by the warm-up could
    # outlive the server's keep-alive (5 s) and fail on reuse, which is not the server's failure
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        deadline[0] = time.perf_counter() + seconds
        await asyncio.gather(*(client(http, [20 // clients + 1]) for _ in range(clients)))
    latencies.clear()
    errors.clear()
    retried[0] = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120) as http:
        budget = [requests]
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        deadline[0] = started + seconds
        await asyncio.gather(*(client(http, budget) for _ in range(clients)))
        wall = time.perf_counter() - started
        cpu = cpu_seconds(pid) - cpu
    for error in errors[:3]:
        print(f"    error: {error}")
    return {"n": len(latencies), "p50": 1000 * float(np.percentile(latencies, 50)),
            "p99": 1000 * float(np.percentile(latencies, 99)), "rps": len(latencies) / wall,
            "cpu_ms": 1000 * cpu / max(len(latencies), 1), "errors": len(errors),
            "retried": retried[0]}


def queries(url: str, n: int = 400) -> dict[str, list[str]]:
    """Request paths per endpoint for the served set at ``url`` (random users, items, phrases)."""
    import httpx

    info = httpx.get(url + "/bundles", timeout=60).json()["bundles"]
    rng = np.random.default_rng(1)
    first = info[0]
    searcher = next(b for b in info if b["search"])
    users = [t for t in Path(first["folder"], "users.tokens").read_text().splitlines()]
    items = [t for t in Path(first["folder"], "items.tokens").read_text().splitlines()]
    return {
        "recommend": [f"/recommend?user={users[i]}&k=10&bundle={first['name']}"
                      for i in rng.integers(0, len(users), n)],
        "similar": [f"/similar/{items[i]}?k=10" for i in rng.integers(0, len(items), n)],
        "search": [f"/search?q={PHRASES[i].replace(' ', '+')}&k=10&bundle={searcher['name']}"
                   for i in rng.integers(0, len(PHRASES), n)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--posters", nargs="+", type=Path, required=True,
                        help="ml-100k-posters bundles, one per feature (the text one last)")
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--clients", default="1,16,64")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--startup-runs", type=int, default=3)
    parser.add_argument("--sets", default="posters,flat,hnsw",
                        help="load: which served sets (names containing these words)")
    parser.add_argument("--parts", default="startup,load",
                        help="what to measure: startup, load or both (default both)")
    parser.add_argument("--workdir", type=Path, help="keep the synthetic bundles here "
                        "(default: a temporary folder)")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    parts = set(args.parts.split(","))
    text_bundle = args.posters[-1]
    user = Path(text_bundle, "users.tokens").read_text().splitlines()[0]
    if "startup" in parts:
        startup(text_bundle, user, args.startup_runs, env)
    if "load" not in parts:
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    print(f"\nsynthetic bundles in {workdir}", flush=True)
    sets = {"ml-100k-posters": list(args.posters)}
    for index in ("flat", "hnsw"):
        sets[f"synthetic {args.items // 1000}k {index}"] = [
            synthetic_bundle(workdir / f"synthetic-{args.items}-{index}", args.items, args.users,
                             index)]
    clients = [int(c) for c in args.clients.split(",")]
    print(f"\nload: at most {args.requests} answers or {args.seconds:.0f} s per cell, k=10")
    print("| bundles | endpoint | clients | answers | p50 ms | p99 ms | answers/s | server CPU "
          "ms / answer | errors | resent |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    chosen = set(args.sets.split(","))
    for name, bundles in sets.items():
        if not any(word in name for word in chosen):
            continue
        log = workdir / f"server-{name.replace(' ', '-')}.log"
        process, url, _ = start_server(bundles, env, log)
        try:
            paths = queries(url)
            for endpoint, endpoint_paths in paths.items():
                for n in clients:
                    cell = asyncio.run(load_cell(url, endpoint_paths, n, args.requests,
                                                 args.seconds, process.pid))
                    print(f"| {name} | {endpoint} | {n} | {cell['n']} | {cell['p50']:.1f} | "
                          f"{cell['p99']:.1f} | {cell['rps']:.1f} | {cell['cpu_ms']:.1f} | "
                          f"{cell['errors']} | {cell['retried']} |", flush=True)
        finally:
            stop(process)
        if log.read_text().strip():
            print(f"    the server wrote to stderr ({log}):\n{log.read_text()[-2000:]}")


if __name__ == "__main__":
    main()
