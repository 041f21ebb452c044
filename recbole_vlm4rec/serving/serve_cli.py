"""``vlm4rec serve`` (an HTTP service over bundles) and ``vlm4rec audit`` (feature
neighbourhoods against behaviour); registered by serving/cli.py."""

from __future__ import annotations

import argparse
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    import socket

SERVE_EPILOG = """\
examples:
  vlm4rec serve bundles/posters-vlm bundles/posters-visual bundles/posters-text
  vlm4rec serve bundles/ml-100k-text --port 8080 --threads 2
  curl 'http://127.0.0.1:8000/recommend?user=196&k=5'
  curl -X POST http://127.0.0.1:8000/recommend -d '{"items": ["50", "181"], "k": 5}'
  curl 'http://127.0.0.1:8000/similar/50?k=8'              # neighbours under every feature
  curl 'http://127.0.0.1:8000/search?q=space+opera+with+robots'
  curl -X POST http://127.0.0.1:8000/reload                # swap in bundles re-exported on disk
  open http://127.0.0.1:8000/                              # the explorer page

Endpoints: GET /recommend?user=&k=&explain=&bundle=, POST /recommend {items, k, explain,
bundle}, GET /similar/{item}?feature=&k=&dataset=, GET /search?q=&k=&bundle=, GET /items?q=
(lookup by title), GET /users/{user}?dataset=&k=, GET /images/{dataset}/{item}, GET /healthz,
GET /bundles, POST /reload[?bundle=] (also on SIGHUP). Errors are JSON {"status", "message"}:
404 unknown ids, 422 bad parameters, 400 a query the bundle cannot answer. Every bundle is
checked before the service listens; a bad one stops it with exit code 2. Bundles of the same
dataset (one per feature) appear side by side in /similar and /users. docs/serving.md has more.
"""

AUDIT_EPILOG = """\
examples:
  vlm4rec audit ml-100k-posters --features visual,vlm,text
  vlm4rec audit ml-100k-posters --features visual,vlm,text --co-measure cosine
  vlm4rec audit ml-100k-posters --features visual,vlm,text --out results/benchmarks/posters/audit/ml-100k-posters
  vlm4rec audit amazon-baby --features visual,text -k 20 --category-column categories

For each feature, its k nearest items (cosine) against the items most co-interacted with in the
training split of the shared protocol: mean Jaccard@k and NDCG@k (gain: users in common, or that
count over the geometric mean of both items' user counts with --co-measure cosine), category
purity@k where the item table has a category column, reach, coverage; random, most-popular and
co-interaction neighbours as reference rows. Writes audit.json, audit.md and audit.png under
--out (default results/audit/<dataset>); an audit under <bench folder>/audit/<dataset>/ becomes
a section of that benchmark's report.html at the next `vlm4rec report`.
"""


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (argparse turns the ValueError into a one-line
    usage error, exit 2)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value
    return parse


def register(subparsers: Any) -> None:
    serve = subparsers.add_parser(
        "serve", help="HTTP service (and explorer page) over one or more serving bundles",
        epilog=SERVE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve recommendations, neighbours and text search from bundles written by "
                    "`vlm4rec export`, with an explorer page at /.")
    serve.add_argument("bundles", nargs="+", metavar="BUNDLE", help="bundle folders")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default "
                       "127.0.0.1: this machine only)")
    serve.add_argument("--port", type=at_least(0), default=8000,
                       help="port (default 8000; 0 picks a free one and prints it)")
    serve.add_argument("--threads", type=at_least(1), default=1,
                       help="BLAS / FAISS threads per request (default 1: concurrency comes "
                       "from serving requests in parallel)")
    serve.add_argument("--no-search", action="store_true",
                       help="do not load text encoders (GET /search answers 400)")
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.set_defaults(func=_serve)

    audit = subparsers.add_parser(
        "audit", help="how each feature's item neighbourhoods agree with co-interactions",
        epilog=AUDIT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare the item neighbourhoods of each feature with behaviour.")
    audit.add_argument("dataset", help="dataset name, e.g. ml-100k-posters")
    audit.add_argument("--features", required=True,
                       help="comma-separated feature names, e.g. visual,vlm,text")
    audit.add_argument("-k", type=at_least(1), default=10, help="neighbours per item (default 10)")
    audit.add_argument("--category-column", help="item-table column with categories (default: "
                       "the first of genre, genres, class, categories, category)")
    audit.add_argument("--co-measure", choices=("count", "cosine"), default="count",
                       help="co-interaction strength: users in common (default), or cosine "
                       "(that count over the geometric mean of both items' user counts: "
                       "less dominated by popular items)")
    audit.add_argument("--sample", type=at_least(1), default=5000,
                       help="query items at most (a seeded sample on larger catalogues; "
                       "default 5000)")
    audit.add_argument("--out", help="output folder (default results/audit/<dataset>)")
    audit.set_defaults(func=_audit, accepts_overrides=True, patches_recbole=True)


def limit_threads(threads: int) -> None:
    """BLAS and FAISS thread pools to ``threads`` (a service runs requests in parallel: more
    threads per request only oversubscribe the cores)."""
    import faiss
    from threadpoolctl import threadpool_limits

    threadpool_limits(threads)
    faiss.omp_set_num_threads(threads)


def listen_socket(host: str, port: int) -> "socket.socket":
    """A listening TCP socket. Made with ``proto=IPPROTO_TCP``: asyncio disables Nagle's
    algorithm only on connections whose socket says so, and without it every answer on a
    kept-alive connection waited ~40 ms for the client's delayed ACK (headers and body are two
    writes)."""
    import socket

    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
        sock.listen(2048)
    except OSError:
        sock.close()
        raise
    return sock


def _serve(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    limit_threads(args.threads)
    from recbole_vlm4rec.serving.bundle_check import BundleError
    from recbole_vlm4rec.serving.recommend import ServingError
    from recbole_vlm4rec.serving.server import create_app
    from recbole_vlm4rec.serving.service import Service

    try:
        service = Service(args.bundles, search=not args.no_search)
    except (BundleError, ServingError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    try:
        sock = listen_socket(args.host, args.port)
    except OSError as error:
        print(f"error: cannot listen on {args.host}:{args.port}: {error}", file=sys.stderr)
        return 2
    import uvicorn

    port = sock.getsockname()[1]
    for served in service.snapshot.bundles.values():
        search = "search" if served.search is None else "no search"
        print(f"  {served.name}: {served.meta['kind']} bundle of {served.meta.get('model')} on "
              f"'{served.feature}' ({served.dataset}, {served.meta['n_items']} items, {search}; "
              f"loaded in {served.load_ms:.0f} ms)")
    print(f"serving {len(service.snapshot.bundles)} bundle(s) on http://{args.host}:{port}/ "
          f"(ready {time.perf_counter() - started:.2f} s after start; Ctrl-C stops)", flush=True)
    config = uvicorn.Config(create_app(service), log_level="warning",
                            access_log=args.access_log, timeout_graceful_shutdown=5)
    uvicorn.Server(config).run(sockets=[sock])
    return 0


def _audit(args: argparse.Namespace) -> int:
    from recbole_vlm4rec.serving.audit import AuditError, run_audit

    from recbole_vlm4rec.run.cli import split_overrides

    overrides = split_overrides(argparse.ArgumentParser(prog="vlm4rec audit"), args.overrides)
    features = [f.strip() for f in args.features.split(",") if f.strip()]
    try:
        run_audit(args.dataset, features, args.k, args.out, args.category_column, overrides,
                  args.sample, args.co_measure)
    except AuditError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
