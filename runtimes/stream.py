"""Pipelined inference over a stream of frames: the next frames are read and prepared in a thread of their own
while the model runs on this one (README: On the device).

    with runtimes.load("bundle") as predictor:
        run = predictor.stream(VideoSource("clip.mp4"))   # or any iterable of images, arrays or file paths
        for r in run:                                      # in the source's order
            print(r.frame.index, r.answer[0].label)        # classifier: top-k; embedding bundle: a unit vector
        print(run.summary())                               # frames, frames/s, p50 per stage, drops, how it ended

Decoding (OpenCV, Pillow) and our resize release the GIL, as ONNX Runtime and OpenVINO do while the model runs, so the
two stages overlap on two cores. At most `depth` prepared frames wait: a file or folder waits for the model; a live
source (a stream or a camera) never waits, and its oldest waiting frame is dropped instead (counted).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InputError, StreamError
from .video import Frame, SourceReport

STAGES = ("read", "prepare", "model")


class Reservoir:
    """A uniform sample of at most `size` values of a stream of any length (Vitter's algorithm R): the medians of a
    day of frames from bounded memory."""

    def __init__(self, size: int = 4096, seed: int = 0) -> None:
        self.size, self.seen, self.sample = size, 0, []  # type: ignore[var-annotated]
        self._rng = np.random.default_rng(seed)

    def add(self, value: float) -> None:
        self.seen += 1
        if len(self.sample) < self.size:
            self.sample.append(value)
            return
        j = int(self._rng.integers(0, self.seen))
        if j < self.size:
            self.sample[j] = value


@dataclass
class StreamResult:
    """One frame's answer: the frame (index, time, RGB image), the answer (a classifier's top-k
    `Classification`s, an embedding bundle's unit vector, or what `answer=` made), and milliseconds per stage."""

    frame: Frame
    answer: Any
    ms: dict[str, float]


class _End:
    """The producer's last item: the error that stopped it, if any."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Pipeline:
    """Frames from `source` through `predictor`, two stages in two threads; iterate it once for `StreamResult`s.

    source: a `runtimes.video.VideoSource`, or any iterable of what `Predictor.prepare` takes per item (image arrays,
    file paths, texts). answer: called on the model's raw output rows for a group of frames, returns one answer per
    row (default: top-`top_k` for a classifier, unit vectors for an embedding bundle). depth: prepared frames that may
    wait for the model. A fixed-batch predictor (`load(..., batch_size=N)`) takes up to N ready frames per call.
    """

    def __init__(
        self,
        predictor: Any,
        source: Iterable[Any],
        *,
        answer: Callable[[np.ndarray], Sequence[Any]] | None = None,
        top_k: int = 5,
        depth: int = 4,
    ) -> None:
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise InputError(f"depth must be a whole number >= 1, got {depth!r}")
        self.predictor, self.source, self.depth = predictor, source, depth
        self.answer = answer or (lambda out: predictor.answers(out, top_k))
        self.report: SourceReport = getattr(source, "report", None) or SourceReport(str(getattr(source, "name", "items")), live=False)
        self.live = bool(getattr(source, "live", False))
        self.timeout_s = float(getattr(source, "timeout_s", 0.0)) or None
        self._queue: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ms: dict[str, Reservoir] = {s: Reservoir() for s in STAGES}
        self._answered = 0
        self._started: float | None = None
        self._elapsed = 0.0
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- producer (its own thread)
    def _frames(self) -> Generator[Frame, None, None]:
        if hasattr(self.source, "frames"):
            yield from self.source.frames()
            return
        for i, item in enumerate(self.source):
            self.report.read += 1
            self.report.kept += 1
            yield item if isinstance(item, Frame) else Frame(i, float(i), item)
        self.report.ended = "end"

    def _produce(self) -> None:
        frames = self._frames()
        end = _End()
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                t1 = time.perf_counter()
                prepared = self.predictor.prepare([frame.image])
                t2 = time.perf_counter()
                self._put((frame, prepared, {"read": (t1 - t0) * 1e3, "prepare": (t2 - t1) * 1e3}))
        except BaseException as exc:  # handed to the consumer, raised there after the frames before it
            end = _End(exc)
        finally:
            frames.close()  # releases the capture in the thread that reads it
            with self._cond:
                self._queue.append(end)
                self._cond.notify_all()

    def _put(self, item: Any) -> None:
        with self._cond:
            while len(self._queue) >= self.depth and not self._stop.is_set():
                if self.live:  # a camera does not wait: the oldest waiting frame goes
                    self._queue.popleft()
                    self.report.dropped += 1
                    break
                self._cond.wait(0.1)
            self._queue.append(item)
            self._cond.notify_all()

    # ---------------------------------------------------------------- consumer (the caller's thread)
    def _take(self, block: bool) -> Any:
        """The next waiting item; blocks (up to twice the source's timeout for a live one) only when `block`."""
        limit = None if self.timeout_s is None or not self.live else 2 * self.timeout_s + 5.0
        deadline = None if limit is None else time.monotonic() + limit
        with self._cond:
            while not self._queue:
                if not block:
                    return None
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    self.report.ended = "stalled"
                    self.report.error = f"{self.report.name}: no frame for {limit:.0f} s (the reader is stuck)"
                    raise StreamError(self.report.error)
                self._cond.wait(0.1 if left is None else min(left, 0.1))
            item = self._queue.popleft()
            self._cond.notify_all()
            return item

    def __iter__(self) -> Iterator[StreamResult]:
        if self._thread is not None:
            raise InputError("a Pipeline is iterated once; make a new one (predictor.stream(...)) to run again")
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._produce, name="edge-transfer-frames", daemon=True)
        self._thread.start()
        group_size = self.predictor.max_batch or 1
        try:
            while True:
                first = self._take(block=True)
                group = [first]
                while not isinstance(group[-1], _End) and len(group) < group_size and (more := self._take(block=False)) is not None:
                    group.append(more)
                end = group.pop() if isinstance(group[-1], _End) else None
                if group:
                    yield from self._answer(group)
                if end is not None:
                    if end.error is not None:
                        raise end.error
                    return
        except KeyboardInterrupt:
            self.report.ended = "interrupted"
            raise
        finally:
            self._elapsed = time.perf_counter() - self._started
            self.stop()

    def _answer(self, group: list[tuple[Frame, np.ndarray, dict[str, float]]]) -> Iterator[StreamResult]:
        batch = np.concatenate([prepared for _, prepared, _ in group]) if len(group) > 1 else group[0][1]
        t0 = time.perf_counter()
        answers = self.answer(self.predictor.run_chunked(batch))
        model_ms = (time.perf_counter() - t0) * 1e3 / len(group)
        for (frame, _, ms), answer in zip(group, answers):
            ms = {**ms, "model": model_ms}
            for stage in STAGES:
                self._ms[stage].add(ms[stage])
            self._answered += 1
            yield StreamResult(frame, answer, ms)

    def stop(self) -> None:
        """Stop reading (the reader finishes the frame in hand and releases the source)."""
        self._stop.set()
        with self._cond:
            self._queue.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)  # a reader stuck in a stalled stream is a daemon: not waited for longer

    def summary(self) -> dict[str, Any]:
        """Frames answered, wall seconds, frames/s, the median milliseconds per stage, and the source's report."""
        elapsed = self._elapsed or (time.perf_counter() - self._started if self._started else 0.0)
        return {
            "frames": self._answered,
            "seconds": round(elapsed, 3),
            "frames_per_s": round(self._answered / elapsed, 2) if elapsed > 0 else None,
            "p50_ms": {s: round(float(np.median(v.sample)), 2) for s, v in self._ms.items() if v.sample},
            "source": self.report.to_dict(),
        }


def summary_line(summary: dict[str, Any]) -> str:
    """A pipeline's summary in one line, for people."""
    src = summary["source"]
    stages = ", ".join(f"{s} {ms:.1f} ms" for s, ms in summary["p50_ms"].items()) or "no frame"
    rate = f"{summary['frames_per_s']:.1f} frames/s" if summary.get("frames_per_s") else "-"
    ended = {
        "end": "end of input",
        "ended-early": "ended early",
        "stalled": "stalled",
        "unopenable": "could not be opened",
        "interrupted": "stopped by Ctrl-C",
        None: "stopped",
    }.get(src.get("ended"), src.get("ended"))
    return (
        f"{src['name']}: {summary['frames']} frame(s) answered of {src.get('read', 0)} read, {src.get('dropped', 0)} dropped, "
        f"{rate} in {summary['seconds']:.1f} s; p50 per frame: {stages}; {ended}"
    )
