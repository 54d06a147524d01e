"""A long-running device loop: classify frames as they arrive, keep a rolling latency/throughput display, survive
bad frames, shut down cleanly on SIGINT/SIGTERM. Needs `runtimes` and one backend; OpenCV only for --camera (the
[video] extra; examples/camera.py is the pipelined camera application).

    python examples/watch_folder.py BUNDLE --folder incoming/        # new image files, each classified once, when
                                                                      # fully written (retried if still unreadable)
    python examples/watch_folder.py BUNDLE --camera 0                 # frames from a camera (the [video] extra)
    python examples/watch_folder.py BUNDLE --folder incoming/ --max-frames 100 --idle-exit 5
    python examples/watch_folder.py /opt/models --folder incoming/    # a models folder made by `edge-transfer deploy`:
                                                                      # a new deploy or rollback is picked up between
                                                                      # frames, without a restart (runtimes.follow)
"""

from __future__ import annotations

import argparse
import collections
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import runtimes

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".npy"}


class FolderFrames:
    """New image files in a folder, oldest first, each classified once per content: a file is known by its path,
    size and modification time, so one rewritten with a new image is classified again.

    A file is handed out only when its size and modification time were the same at two polls in a row (a copy or
    a camera still writing it is left alone until it settles). A file that still cannot be decoded gets `retries`
    more tries, 0.5, 1, 2, ... s later (`retry`), then is skipped for good.
    """

    def __init__(self, folder: Path, stop: list[bool], poll: float, idle_exit: float | None, retries: int = 3) -> None:
        self.folder, self.stop, self.poll, self.idle_exit, self.retries = folder, stop, poll, idle_exit, retries
        self.seen: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) when it was handed out
        self.last: dict[Path, tuple[int, int]] = {}  # path -> (size, mtime_ns) at the previous poll
        self.tries: collections.Counter[Path] = collections.Counter()
        self.not_before: dict[Path, float] = {}  # retried files wait until then

    def retry(self, path: str) -> bool:
        """Try `path` again once it is stable again; False when its retries are used up."""
        p = Path(path)
        self.tries[p] += 1
        if self.tries[p] > self.retries:
            return False
        self.seen.pop(p, None)
        self.last.pop(p, None)
        self.not_before[p] = time.monotonic() + 0.5 * 2 ** (self.tries[p] - 1)
        return True

    def _settled(self) -> list[Path]:
        ready = []
        now: dict[Path, tuple[int, int]] = {}
        for p in self.folder.iterdir():
            if p.suffix.lower() not in IMAGE_SUFFIXES or time.monotonic() < self.not_before.get(p, 0.0):
                continue
            try:
                st = p.stat()
            except FileNotFoundError:  # removed between listing and stat
                continue
            signature = (st.st_size, st.st_mtime_ns)
            now[p] = signature
            if self.seen.get(p) != signature and self.last.get(p) == signature:
                ready.append((st.st_mtime_ns, p))
        self.last = now  # files removed are forgotten
        return [p for _, p in sorted(ready)]

    def __iter__(self) -> Iterator[tuple[str, object]]:
        idle_since = time.monotonic()
        while not self.stop[0]:
            ready = self._settled()
            for path in ready:
                self.seen[path] = self.last[path]
                yield path.name, str(path)  # the file path is the frame (decoded by predict)
            if (
                ready or any(self.seen.get(p) != sig for p, sig in self.last.items()) or any(t > time.monotonic() for t in self.not_before.values())
            ):  # still coming
                idle_since = time.monotonic()
            elif self.idle_exit is not None and time.monotonic() - idle_since > self.idle_exit:
                return
            time.sleep(self.poll)


def camera_frames(index: int, stop: list[bool]) -> Iterator[tuple[str, object]]:
    """Frames of a camera through `runtimes.VideoSource` (RGB, converted from OpenCV's BGR once); a camera that
    cannot be opened or stalls ends the loop with its error."""
    try:
        for frame in runtimes.VideoSource(index).frames():
            if stop[0]:
                return
            yield f"frame {frame.index}", frame.image
    except runtimes.EdgeTransferError as exc:  # no camera, OpenCV missing, or the camera stalled: said, then stop
        print(f"error: {exc}", file=sys.stderr, flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle", help="a bundle, or a models folder managed by `edge-transfer deploy` (its current version is followed)")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--folder", type=Path, help="watch this folder for new image files")
    src.add_argument("--camera", type=int, help="read frames from this camera index (OpenCV)")
    ap.add_argument("--max-frames", type=int, help="stop after this many frames")
    ap.add_argument("--idle-exit", type=float, help="folder mode: stop after this many seconds without new files")
    ap.add_argument("--retries", type=int, default=3, help="folder mode: tries more for a file that cannot be read yet (default 3)")
    ap.add_argument("--every", type=int, default=10, help="print the rolling statistics every N frames (default 10)")
    ap.add_argument("--skip-self-test", action="store_true", help="start without running the bundle's self-test first")
    args = ap.parse_args()

    stop = [False]

    def request_stop(signum, _frame) -> None:
        stop[0] = True  # finish the current frame, then leave the loop
        print(f"received {signal.Signals(signum).name}, stopping after this frame", file=sys.stderr)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)

    following = (Path(args.bundle) / "current").is_symlink()  # a models folder: follow what deploy makes current
    model = runtimes.follow(args.bundle) if following else runtimes.load(args.bundle)
    predictor = model.predictor if isinstance(model, runtimes.FollowingPredictor) else model
    version = getattr(model, "version", None)
    if not args.skip_self_test:  # before serving: does this device compute what was validated on the host?
        try:
            print(predictor.self_test().summary(), flush=True)
        except runtimes.SelfTestFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(
        f"running {args.bundle}{f' ({version})' if version else ''} on {predictor.describe()['backend']} {predictor.device} "
        f"({predictor.inference_precision or 'precision unknown'})",
        flush=True,
    )
    folder = FolderFrames(args.folder, stop, 0.05, args.idle_exit, args.retries) if args.folder else None
    frames = iter(folder) if folder is not None else camera_frames(args.camera, stop)
    window: collections.deque[float] = collections.deque(maxlen=100)
    ok = bad = 0
    started = time.perf_counter()
    with model:
        for name, frame in frames:
            t0 = time.perf_counter()
            try:
                top = model.predict(frame, top_k=1)[0][0]
            except runtimes.EdgeTransferError as exc:  # a bad frame: log it, keep going
                if folder is not None and folder.retry(str(frame)):  # maybe caught mid-write: once more, later
                    print(f"{name}: not readable yet, will retry ({exc})", file=sys.stderr, flush=True)
                    continue
                bad += 1
                print(f"{name}: skipped ({exc})", file=sys.stderr, flush=True)
                continue
            window.append(time.perf_counter() - t0)
            if getattr(model, "version", None) != version:
                version = getattr(model, "version", None)
                print(f"now running {version} (deployed while running)", flush=True)
            ok += 1
            print(f"{name}: {top.label} {top.score:.0%}", flush=True)
            if ok % args.every == 0:
                ms = np.asarray(window) * 1000
                print(
                    f"[last {len(ms)}] p50 {np.median(ms):.1f} ms, p90 {np.percentile(ms, 90):.1f} ms, {len(ms) / (ms.sum() / 1000):.0f} frames/s",
                    flush=True,
                )
            if args.max_frames and ok + bad >= args.max_frames:
                break
    elapsed = time.perf_counter() - started
    print(f"done: {ok} classified, {bad} skipped in {elapsed:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
