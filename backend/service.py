"""The GPU container's work: start Ollama, prepare models, relay requests.

`app.py`'s `OllamaBackend` class only calls into this, so the lifecycle can be tested
without Modal (its `.local()` skips async hooks and cannot run async generators).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Callable

from backend import catalog as catalogs
from backend import ollama_server
from backend.cancel import StopSignals, until_stopped
from backend.relay import OllamaRelay
from backend.routes import writes_model_store
from backend.wire import END, Frame, RequestFrame

log = logging.getLogger(__name__)


def changes_model_store(method: str, path: str, status: int) -> bool:
    """True if a request that succeeded with `status` changed the models on disk."""
    return 200 <= status < 300 and writes_model_store(method, path)


class OllamaService:
    """One Ollama on this machine, and the relay in front of it."""

    def __init__(
        self,
        base_url: str,
        models: tuple[str, ...],
        commit: Callable[[], None],
        server: ollama_server.OllamaServer | None = None,
        ready_timeout: float = 120.0,
        catalog: catalogs.DictCatalog | None = None,
    ) -> None:
        self.base_url = base_url
        self.models = models
        self.commit = commit  # persists the model store (Modal: volume.commit)
        self.catalog = catalog  # what the gateway answers metadata from (None: it forwards all)
        self.ready_at: float | None = None  # wall-clock time start() finished (Modal then sends inputs)
        self._catalog_lock = threading.Lock()  # one build at a time, so the last written is the newest
        self.server = server or ollama_server.OllamaServer(base_url)
        self.ready_timeout = ready_timeout
        self.relay = OllamaRelay(base_url)
        self._store_dirty = False  # a store change not yet committed
        self._committer: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start Ollama, pull missing models, commit, preload the first model."""
        self.server.start()
        waited = self.server.wait_ready(self.ready_timeout)
        log.info("ollama answered after %.1fs", waited)
        pulled, failed = ollama_server.pull_missing(self.base_url, self.models)
        if pulled:
            self._commit(", ".join(pulled))
        self.refresh_catalog("start-up")  # before the preload: metadata needs no loaded model
        available = [m for m in self.models if m not in failed]
        if available:
            try:
                seconds = ollama_server.preload(self.base_url, available[0])
                log.info("model %s loaded in %.1fs", available[0], seconds)
            except (ollama_server.PullError, OSError, ValueError) as exc:
                log.error("could not preload %s: %s", available[0], exc)
        self.mark_ready()

    def mark_ready(self) -> None:
        self.ready_at = time.time()

    def waited_for_start(self, request: RequestFrame) -> bool:
        """Was `request` sent before this container was ready, so that it waited for a cold
        start? (Wall clocks of Modal's hosts agree to well under a cold start's seconds.)"""
        sent_at = request.get("sent_at")
        return sent_at is not None and self.ready_at is not None and sent_at < self.ready_at

    async def proxy(self, request: RequestFrame, stops: StopSignals | None = None) -> AsyncIterator[Frame]:
        """Relay one request; after a successful store change, commit the volume.

        With `stops`, the request also ends when the gateway signals that its client
        left, since Modal does not tell a generator that its consumer went away.
        """
        frames = self.relay.stream(request)
        # This run of the request, in every frame: Modal re-runs a preempted input in another
        # container, whose frames the gateway must tell apart (backend.wire). From the OS's
        # entropy, not `random`, whose state a memory snapshot would copy into every container.
        run = int.from_bytes(os.urandom(8), "big")
        request_id = request.get("request_id")
        stop = None
        if stops is not None and request_id:
            stop = asyncio.ensure_future(stops.wait(request_id))
            frames = until_stopped(frames, stop)
        status = 0
        # A store change holds back its last frame until the catalog is rewritten: a
        # client that sees its pull or delete complete then lists the new store.
        hold_last = self.catalog is not None and writes_model_store(request["method"], request["path"])
        held: Frame | None = None
        async with contextlib.aclosing(frames):
            try:
                async for chunk in frames:
                    if isinstance(chunk, dict):
                        status = chunk["status"]
                        frame = {**chunk, "run": run}
                        if self.waited_for_start(request):
                            frame["cold_start"] = True
                    else:
                        frame = (run, chunk)
                    if hold_last:
                        frame, held = held, frame
                        if frame is None:
                            continue
                    yield frame
            except Exception:
                if held is not None:  # what Ollama sent before it failed still goes out, then the error
                    yield held
                raise
        stopped = stop is not None and stop.done() and not stop.cancelled()
        if not stopped and changes_model_store(request["method"], request["path"], status):
            self.store_changed()  # first: a client that leaves now must not cost the commit
            if self.catalog is not None:
                await asyncio.to_thread(self.refresh_catalog, f"after {request['method']} {request['path'].partition('?')[0]}")
        if held is not None:
            yield held
        if not stopped:
            yield (run, END)  # the answer is whole

    def refresh_catalog(self, reason: str) -> None:
        """Rewrite the catalog from this Ollama (blocking: start-up hook or worker thread)."""
        if self.catalog is not None:
            with self._catalog_lock:
                catalogs.refresh(self.base_url, self.catalog, reason)

    def store_changed(self) -> None:
        """Commit the volume in the background, never inside a response.

        On Modal the client's stream ends only when this generator returns, a commit
        retries for minutes when it must, and an error raised after the last frame could
        overtake it on its way to the caller. So the response ends now; commits run one
        at a time behind it (changes made meanwhile share the next one), and a failed one
        is logged: Modal commits the volume again when the container exits.
        """
        self._store_dirty = True
        if self._committer is None or self._committer.done():
            self._committer = asyncio.ensure_future(self._commit_in_background())

    async def _commit_in_background(self) -> None:
        while self._store_dirty:
            self._store_dirty = False
            # Modal's commit is blocking; keep the event loop free for other streams.
            await asyncio.to_thread(self._commit, "after an API store change")

    async def settle(self) -> None:
        """Wait for background commits (tests, and a clean exit)."""
        while self._committer is not None and not self._committer.done():
            await self._committer

    def _commit(self, reason: str) -> None:
        started = time.monotonic()
        try:
            self.commit()
        except Exception as exc:  # noqa: BLE001 (a reload fails while Ollama holds a model file open)
            # Modal's commit() reloads the volume after committing: this may be that reload.
            log.warning(
                "volume commit (%s) or its reload failed: %s: %s; Modal commits again when the container exits",
                reason, type(exc).__name__, exc,
            )  # fmt: skip
            return
        log.info("volume committed (%s) in %.1fs", reason, time.monotonic() - started)

    def stop(self) -> None:
        self.server.stop()
