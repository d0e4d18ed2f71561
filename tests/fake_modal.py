"""Modal's objects as this project uses them, in process: the Modal-like seam of the tests.

Faithful where the design depends on it (read from the installed modal 1.6 source):
- `remote_gen.aio(request)`: each input runs as its own task in the "container"; only
  pickled values cross (request in, frames out); the caller closing its iterator early
  tells the producer nothing (modal-client sends no cancel).
- Preemption (`FakeBackendMethod.preempt`): the input is re-run in a new container and
  the caller skips the frame indices it already has, as modal's client does
  (`detached_call`).
- `get_current_stats.aio()`: a control-plane read that creates no input and starts no
  container; `num_total_runners` (the server's `num_total_tasks`) counts the function's
  containers, busy or idle; the seam counts one from the moment it is started for an input.
- With a `scaledown` window, a container that has run no input for that long exits
  (Modal's `scaledown_window`); the seam keeps its own count of container-seconds.
- `modal.Dict`: values are pickled; `get` returns the default for a missing key.
- `modal.Queue`: partitions, and `queue.Empty` when a get times out.
"""

from __future__ import annotations

import asyncio
import pickle
import queue
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any


class _Method:
    """A Modal live method: callable (blocking) and `.aio` (async)."""

    def __init__(self, blocking: Callable[..., Any], aio: Callable[..., Any]) -> None:
        self._blocking = blocking
        self.aio = aio

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._blocking(*args, **kwargs)


def _cross(value: Any) -> Any:
    """What arrives on the other side of a Modal call."""
    return pickle.loads(pickle.dumps(value))


def detached_call(
    produce: Callable[[dict], AsyncIterator[Any]],
    preemptions: list[int | None] | None = None,
    new_container: Callable[[], Awaitable[None]] | None = None,
) -> Callable[[dict], AsyncIterator[Any]]:
    """Like Modal's `remote_gen.aio`: the producer runs on its own, and when the consumer
    stops reading, nothing tells the producer.

    Preemption, as modal 1.6.4 handles it: each number taken from `preemptions` (one per
    run, in order) preempts that run after it has sent that many frames (0: before its
    first, e.g. while its container starts). Modal re-runs the input, the same pickled
    request, in a new container (`new_container()` waits for it), and the caller keeps its
    place by index: `_stream_function_call_data` (modal/_utils/function_utils.py:451,
    473-474, 481) starts at `last_index = 0`, skips `if chunk.index <= last_index`, and
    keeps `last_index = chunk.index`, and the new run numbers its outputs from 1 again;
    `run_generator` (modal/_functions.py:364-383) counts items across runs and stops once
    `items_received >= items_total` of the run that finished. The caller sees no error:
    internal failures (lost inputs, preemption) are re-run at once, up to
    `MAX_INTERNAL_FAILURE_COUNT` = 8 times, outside any `retries` (modal/_functions.py:121, 513-518).
    """
    producers: list[asyncio.Task] = []
    runs: list[dict] = []  # the request of every run, re-runs included
    preemptions = [] if preemptions is None else preemptions

    def call(request: dict) -> AsyncIterator[Any]:
        async def consume() -> AsyncIterator[Any]:
            outputs: asyncio.Queue = asyncio.Queue()  # Modal's data_out stream, in order

            async def run_once(preempt_after: int | None) -> bool:
                """One run in one container; False if it was preempted."""
                runs.append(request)
                frames = produce(_cross(request))
                index = 0
                try:
                    async for frame in frames:
                        if index == preempt_after:
                            return False  # the container dies: this frame and the rest are lost
                        index += 1
                        await outputs.put(("output", index, _cross(frame)))
                finally:
                    await frames.aclose()  # its Ollama request dies with it
                await outputs.put(("done", index, None))  # GeneratorDone(items_total=index)
                return True

            async def pump() -> None:
                try:
                    while not await run_once(preemptions.pop(0) if preemptions else None):
                        if new_container is not None:
                            await new_container()
                except Exception as exc:  # noqa: BLE001
                    await outputs.put(("error", 0, exc))

            producers.append(asyncio.ensure_future(pump()))
            last_index = 0
            items_received = 0
            while True:
                kind, index, value = await outputs.get()
                if kind == "error":
                    raise value
                if kind == "done":
                    if items_received >= index:
                        return
                    continue
                if index <= last_index:
                    continue
                last_index = index
                items_received += 1
                yield value

        return consume()

    call.producers = producers  # type: ignore[attr-defined]
    call.runs = runs  # type: ignore[attr-defined]
    return call


@dataclass(frozen=True)
class FunctionCurrentStats:  # modal.types.FunctionCurrentStats
    backlog: int
    num_total_runners: int
    num_running_inputs: int
    input_headroom: int


class FakeBackendMethod:
    """`OllamaBackend().proxy` as the gateway sees it. A container "starts" with the first
    input and stays up until `scale_to_zero()`, or, with `scaledown`, until it has run no
    input for that many seconds (Modal's scale-down window); while it starts
    (`start_delay` seconds: the image, `ollama serve`, the pulls) inputs wait, and a stop
    sent meanwhile is there when they run. `container_seconds` is how long containers
    have been up, by the seam's own clock (the event loop's)."""

    def __init__(
        self,
        produce: Callable[[dict], AsyncIterator[Any]],
        start_delay: float = 0.0,
        on_ready: Callable[[], None] = lambda: None,
        scaledown: float | None = None,
    ) -> None:
        self.calls: list[dict] = []
        self.on_ready = on_ready  # the container's start-up hook finished (Modal's @enter)
        self.containers = 0
        self.stats_reads = 0
        self.start_delay = start_delay
        self.scaledown = scaledown
        self.starts = 0  # containers started so far
        self._ready_at = 0.0
        self._running = 0  # inputs running in the container
        self._idle_since = 0.0
        self._up_since: float | None = None
        self._seconds_done = 0.0
        self._produce = produce
        self.preemptions: list[int | None] = []  # see preempt()
        self._call = detached_call(self._after_start, self.preemptions, self._new_container)
        self.remote_gen = _Method(self._blocking, self._remote_gen)
        self.get_current_stats = _Method(self._blocking, self._stats)

    @property
    def producers(self) -> list[asyncio.Task]:
        return self._call.producers  # type: ignore[attr-defined]

    @property
    def runs(self) -> list[dict]:
        """The request of every run: one per call, and one per re-run after a preemption."""
        return self._call.runs  # type: ignore[attr-defined]

    def preempt(self, *after_frames: int | None) -> None:
        """Preempt the next runs, in order, each after it has sent that many frames (the
        head is the first; None: that run is not preempted); Modal re-runs each in a new
        container (see `detached_call`)."""
        self.preemptions.extend(after_frames)

    async def _new_container(self) -> None:
        # The re-run's container starts as any does (the image, `ollama serve`, the model).
        await asyncio.sleep(self.start_delay)

    def _blocking(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the gateway must use .aio: it runs on an event loop")

    def _remote_gen(self, request: dict) -> AsyncIterator[Any]:
        self.calls.append(request)
        loop = asyncio.get_running_loop()
        if self.containers == 0:  # a cold start
            self.containers = 1
            self.starts += 1
            self._up_since = self._idle_since = loop.time()
            self._ready_at = loop.time() + self.start_delay
            loop.call_later(self.start_delay, self.on_ready)
            if self.scaledown is not None:
                loop.call_later(self.start_delay + self.scaledown, self._maybe_scale_down)
        return self._call(request)

    async def _after_start(self, request: dict) -> AsyncIterator[Any]:
        loop = asyncio.get_running_loop()
        self._running += 1
        try:
            wait = self._ready_at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            async for frame in self._produce(request):
                yield frame
        finally:
            self._running -= 1
            self._idle_since = loop.time()
            if self._running == 0 and self.scaledown is not None:
                loop.call_later(self.scaledown, self._maybe_scale_down)

    def _maybe_scale_down(self) -> None:
        if self.containers and self._running == 0 and asyncio.get_running_loop().time() - self._idle_since >= self.scaledown - 1e-3:
            self.scale_to_zero()

    @property
    def container_seconds(self) -> float:
        up = 0.0 if self._up_since is None else asyncio.get_running_loop().time() - self._up_since
        return self._seconds_done + up

    async def _stats(self) -> FunctionCurrentStats:
        self.stats_reads += 1
        running = sum(not p.done() for p in self.producers)
        return FunctionCurrentStats(backlog=0, num_total_runners=self.containers, num_running_inputs=running, input_headroom=0)

    def scale_to_zero(self) -> None:
        if self.containers and self._up_since is not None:
            self._seconds_done += asyncio.get_running_loop().time() - self._up_since
        self._up_since = None
        self.containers = 0


class FakeModalDict:
    """`modal.Dict`: blocking calls and `.aio`, values pickled both ways."""

    def __init__(self) -> None:
        self.data: dict[Any, bytes] = {}
        self.reads = 0
        self.get = _Method(self._get, self._get_aio)
        self.put = _Method(self._put, self._put_aio)
        self.pop = _Method(self._pop, self._pop_aio)
        self.items = _Method(self._items, self._items_aio)

    def _get(self, key: Any, default: Any = None) -> Any:
        self.reads += 1
        return pickle.loads(self.data[key]) if key in self.data else default

    async def _get_aio(self, key: Any, default: Any = None) -> Any:
        return self._get(key, default)

    def _put(self, key: Any, value: Any) -> bool:
        self.data[key] = pickle.dumps(value)
        return True

    async def _put_aio(self, key: Any, value: Any) -> bool:
        # modal 1.6.4 pickles the value inside the call's coroutine (modal/dict.py, put),
        # which synchronicity runs on its own thread: later than this call, while the
        # caller's loop goes on. Yield first, so a caller that hands over a live object
        # sees it pickled as it is after the loop has moved on.
        await asyncio.sleep(0)
        return self._put(key, value)

    def _pop(self, key: Any, *default: Any) -> Any:
        if key not in self.data:
            if default:
                return default[0]
            raise KeyError(key)  # as modal.Dict.pop without a default
        return pickle.loads(self.data.pop(key))

    async def _pop_aio(self, key: Any, *default: Any) -> Any:
        return self._pop(key, *default)

    def _items(self) -> list[tuple[Any, Any]]:
        return [(key, pickle.loads(value)) for key, value in list(self.data.items())]

    async def _items_aio(self) -> AsyncIterator[tuple[Any, Any]]:
        # Modal's `items.aio()` is an async generator over (key, value), in no set order.
        for item in self._items():
            yield item


class FakeModalQueue:
    """The slice of `modal.Queue` that QueueStopSignals uses: `.put.aio` / `.get.aio`
    with partitions, and `queue.Empty` on a get that times out."""

    def __init__(self) -> None:
        self.partitions: dict[str, asyncio.Queue] = {}
        self.puts: list[tuple[str, int]] = []
        self.gets = 0
        self.put = _Method(self._blocking, self._put)
        self.get = _Method(self._blocking, self._get)

    def _blocking(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("stop signals use .aio")

    async def _put(self, value: Any, *, partition: str, partition_ttl: int) -> None:
        self.puts.append((partition, partition_ttl))
        self._partition(partition).put_nowait(_cross(value))

    async def _get(self, *, partition: str, timeout: float) -> Any:
        self.gets += 1
        try:
            return await asyncio.wait_for(self._partition(partition).get(), min(timeout, 0.05))
        except TimeoutError:
            raise queue.Empty from None

    def _partition(self, name: str) -> asyncio.Queue:
        return self.partitions.setdefault(name, asyncio.Queue())
