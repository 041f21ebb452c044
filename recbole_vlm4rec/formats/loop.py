"""An asyncio event loop on a thread of its own, for synchronous code that runs coroutines (the
grounding pipeline's threads driving an async backend, the LVLM embedder driving the HTTP client)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")

class BackgroundLoop:
    """An asyncio event loop on a daemon thread, started at the first :meth:`submit`; lets
    synchronous code (the grounding pipeline's threads, the LVLM embedder) run coroutines."""

    def __init__(self, name: str = "openai-loop") -> None:
        self.name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # two threads submitting first must not start two loops

    def submit(self, coroutine: Coroutine[Any, Any, Any]) -> concurrent.futures.Future:
        """Run ``coroutine`` on the loop; cancelling the returned future cancels it."""
        with self._lock:
            if self._loop is None:
                self._start()
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """``submit`` and wait for the result."""
        return self.submit(coroutine).result()

    def _start(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            loop.call_soon(ready.set)
            loop.run_forever()

        self._thread = threading.Thread(target=run, name=self.name, daemon=True)
        self._thread.start()
        ready.wait()
        self._loop = loop

    def stop(self, last: Coroutine[Any, Any, Any] | None = None, timeout_s: float = 30.0) -> None:
        """Run ``last`` (e.g. a client's ``aclose``) on the loop, then stop the thread."""
        with self._lock:
            loop, self._loop = self._loop, None
        if loop is None:
            if last is not None:
                last.close()  # never started: nothing to clean up
            return
        try:
            if last is not None:
                asyncio.run_coroutine_threadsafe(last, loop).result(timeout=timeout_s)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError):
            pass
        finally:
            loop.call_soon_threadsafe(loop.stop)
            if self._thread is not None:
                self._thread.join(timeout=10)
            if not loop.is_running():
                loop.close()
