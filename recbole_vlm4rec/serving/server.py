"""``vlm4rec serve``: the HTTP face of service.py (Starlette on uvicorn).

Why Starlette and not FastAPI: the service has eleven routes whose parameters are one or two
integers and strings, checked here with messages that name the parameter and the accepted range;
FastAPI's gain is request models and generated docs, at the cost of pydantic's error format (a
list of error objects, where this API promises one status and one message) and a slower import
(startup to the first answer is a goal). Starlette is what FastAPI runs on, so nothing is lost
underneath: same ASGI server (uvicorn), same test client.

Every error is ``{"status": N, "message": "..."}``: 404 for an unknown user, item, bundle, dataset,
image or route; 422 for a parameter out of range or missing (k, explain, q, user), an empty
history or an unknown feature name; 400 for a query the bundle cannot answer (a text search where
its encoder cannot embed text, an item list on a top-n bundle, a malformed JSON body); 409 for a
reload that kept the old version of a bundle. Handlers are plain functions, run in Starlette's
thread pool: numpy and FAISS release the GIL, so requests overlap.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from recbole_vlm4rec.serving.recommend import (EmptyHistoryError, InvalidQueryError,
                                               ServingError, UnknownItemError, UnknownUserError)
from recbole_vlm4rec.serving import explore
from recbole_vlm4rec.serving.explore import UnknownFeatureError
from recbole_vlm4rec.serving.service import (IMAGE_TYPES, MAX_IMAGE_BYTES, NotFoundError,
                                             ReloadError, Service, image_path)

MAX_K = 1000
EXPLORER = Path(__file__).with_name("explorer.html")


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def status_of(error: ServingError) -> int:
    if isinstance(error, (UnknownUserError, UnknownItemError, NotFoundError)):
        return 404
    if isinstance(error, (InvalidQueryError, EmptyHistoryError, UnknownFeatureError)):
        return 422
    if isinstance(error, ReloadError):
        return 409
    return 400  # the bundle cannot answer this kind of query


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"status": status, "message": message}, status_code=status)


def _integer(raw: Any, name: str, default: int, minimum: int, maximum: int) -> int:
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, (int, str)):
        raise ApiError(422, f"{name} must be an integer from {minimum} to {maximum}, got {raw!r}")
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(422, f"{name} must be an integer from {minimum} to {maximum}, got "
                       f"{raw!r}") from None
    if not minimum <= value <= maximum:
        raise ApiError(422, f"{name} must be an integer from {minimum} to {maximum}, got {value}")
    return value


def _counts(source: Any) -> tuple[int, int]:
    return (_integer(source.get("k"), "k", 10, 1, MAX_K),
            _integer(source.get("explain"), "explain", 2, 0, 100))


def _required(request: Request, name: str, example: str) -> str:
    value = request.query_params.get(name)
    if value is None or not value.strip():
        raise ApiError(422, f"give ?{name}=..., e.g. {example}")
    return value


def create_app(service: Service) -> Starlette:
    """The ASGI app over ``service`` (its current snapshot is read once per request)."""

    def recommend_get(request: Request) -> JSONResponse:
        k, explain = _counts(request.query_params)
        user = _required(request, "user", "/recommend?user=196&k=10")
        return JSONResponse(service.recommend(service.snapshot,
                                              request.query_params.get("bundle"), k, explain,
                                              user=user))

    async def recommend_post(request: Request) -> JSONResponse:
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError as error:
            raise ApiError(400, f"the body is not JSON: {error}") from None
        if not isinstance(body, dict) or not isinstance(body.get("items"), list):
            raise ApiError(422, 'POST /recommend takes a JSON object {"items": ["50", "181"], '
                           '"k": 10}; for a known user use GET /recommend?user=')
        if not all(isinstance(i, (str, int)) and not isinstance(i, bool) for i in body["items"]):
            raise ApiError(422, "items must be item tokens (strings or integers)")
        k, explain = _counts(body)
        bundle = body.get("bundle")
        if bundle is not None and not isinstance(bundle, str):
            raise ApiError(422, f"bundle must be a bundle name, got {bundle!r}")
        snapshot = service.snapshot
        return await _threaded(lambda: JSONResponse(service.recommend(
            snapshot, bundle, k, explain, items=[str(i) for i in body["items"]])))

    def similar(request: Request) -> JSONResponse:
        k = _integer(request.query_params.get("k"), "k", 10, 1, MAX_K)
        return JSONResponse(explore.similar(service, service.snapshot,
                                            request.query_params.get("dataset"),
                                            request.path_params["item"], k,
                                            request.query_params.get("feature")))

    def search(request: Request) -> JSONResponse:
        k = _integer(request.query_params.get("k"), "k", 10, 1, MAX_K)
        text = _required(request, "q", "/search?q=space+opera+with+robots")
        return JSONResponse(service.search(service.snapshot, request.query_params.get("bundle"),
                                           text, k))

    def items(request: Request) -> JSONResponse:
        k = _integer(request.query_params.get("k"), "k", 24, 1, MAX_K)
        text = _required(request, "q", "/items?q=star+wars")
        return JSONResponse(explore.find_items(service, service.snapshot,
                                               request.query_params.get("dataset"), text, k))

    def user(request: Request) -> JSONResponse:
        k = _integer(request.query_params.get("k"), "k", 10, 1, MAX_K)
        return JSONResponse(explore.user_page(service, service.snapshot,
                                              request.query_params.get("dataset"),
                                              request.path_params["user"], k))

    def image(request: Request) -> Response:
        snapshot = service.snapshot
        dataset, bundles = service.dataset(snapshot, request.path_params["dataset"])
        path = image_path(bundles, request.path_params["item"])
        if path is None or path.stat().st_size > MAX_IMAGE_BYTES:
            raise NotFoundError(f"no image for item {request.path_params['item']!r} in dataset "
                                f"{dataset!r}")
        return FileResponse(path, media_type=IMAGE_TYPES[path.suffix.lower()],
                            headers={"Cache-Control": "max-age=3600"})

    def healthz(request: Request) -> JSONResponse:
        snapshot = service.snapshot
        return JSONResponse({"status": "ok", "bundles": len(snapshot.bundles),
                             "generation": snapshot.generation})

    def bundles(request: Request) -> JSONResponse:
        snapshot = service.snapshot
        return JSONResponse({"generation": snapshot.generation,
                             "bundles": [b.info() for b in snapshot.bundles.values()]})

    def reload(request: Request) -> JSONResponse:
        return JSONResponse(service.reload(request.query_params.get("bundle")))

    def explorer(request: Request) -> HTMLResponse:
        return HTMLResponse(EXPLORER.read_text(encoding="utf-8"))

    async def api_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(error.status, error.message)

    async def serving_error(request: Request, error: Exception) -> JSONResponse:
        return error_response(status_of(error), str(error))

    async def http_error(request: Request, error: Exception) -> JSONResponse:
        message = {404: f"no route {request.method} {request.url.path}; see GET /bundles and "
                        "docs/serving.md", 405: f"{request.method} is not allowed on "
                        f"{request.url.path}"}.get(error.status_code, str(error.detail))
        return error_response(error.status_code, message)

    async def unexpected(request: Request, error: Exception) -> JSONResponse:
        return error_response(500, f"internal error ({type(error).__name__}: {error}); please "
                              "report it with the request that caused it")

    routes = [Route("/", explorer), Route("/healthz", healthz), Route("/bundles", bundles),
              Route("/recommend", recommend_get, methods=["GET"]),
              Route("/recommend", recommend_post, methods=["POST"]),
              Route("/similar/{item:path}", similar), Route("/search", search),
              Route("/items", items), Route("/users/{user:path}", user),
              Route("/images/{dataset}/{item:path}", image),
              Route("/reload", reload, methods=["POST"])]
    app = Starlette(routes=routes, exception_handlers={
        ApiError: api_error, ServingError: serving_error, HTTPException: http_error,
        Exception: unexpected}, lifespan=_lifespan(service))
    app.state.service = service
    return app


async def _threaded(call: Callable[[], Any]) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(call)


def _lifespan(service: Service):
    """Reload on SIGHUP (the main thread only: a test server in a thread has no signals)."""
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: Starlette):
        loop = asyncio.get_running_loop()

        def on_hangup() -> None:
            async def run() -> None:
                try:
                    answer = await loop.run_in_executor(None, service.reload)
                    print(f"reload (SIGHUP): {answer}", file=sys.stderr)
                except ServingError as error:
                    print(f"reload (SIGHUP): {error}", file=sys.stderr)
            loop.create_task(run())

        try:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        except (RuntimeError, ValueError, NotImplementedError, AttributeError):
            pass
        yield

    return lifespan
