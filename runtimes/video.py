"""Frames from a video file, a network stream or a camera, through OpenCV (the `[video]` extra); torch-free.

    source = VideoSource("clip.mp4", every=3)        # or "rtsp://...", "http://...", or a camera index: VideoSource(0)
    for frame in source:                              # Frame(index, time_s, image): RGB uint8, converted from BGR once
        ...
    source.report                                     # frames read and kept, dropped, how it ended

How a source ends is part of the answer, never a silent stop:
- a file that reaches its end after fewer frames than its header declares ended early (truncated or damaged);
- a stream or camera that gives no frame for `timeout_s` stalled;
- a file, URL or camera that cannot be opened is refused before any frame.
Each of these raises `StreamError` after the frames that were read (`runtimes.stream` reports them first).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import BackendUnavailableError, InputError, StreamError, install_hint

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ts", ".wmv", ".flv", ".3gp")
STREAM_SCHEMES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://", "srt://")
DEFAULT_TIMEOUT_S = 10.0  # a stream or camera silent for this long has stalled
VIDEO_EXTRA = f"{install_hint('video')} (opencv-python-headless)"


def is_stream_url(name: str) -> bool:
    return name.lower().startswith(STREAM_SCHEMES)


def is_video_input(name: str) -> bool:
    """A video file (by its suffix) or a stream URL: what `predict` reads frame by frame."""
    return is_stream_url(name) or os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


def opencv() -> Any:
    """OpenCV's module, quiet (FFmpeg's and OpenCV's own logs off: failures reach the user as our errors), or a
    `BackendUnavailableError` naming the extra."""
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # read when FFmpeg is first used
    try:
        import cv2
    except ImportError:
        raise BackendUnavailableError(f"reading video, streams and cameras needs OpenCV: {VIDEO_EXTRA}") from None
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    except AttributeError:  # older builds without the logging module
        pass
    return cv2


@dataclass
class Frame:
    """One frame: its index in the source (counting every frame read, kept or not), its time in seconds (the
    file's timestamp; for a stream or camera, seconds since it opened) and the image, RGB uint8 (H, W, 3)."""

    index: int
    time_s: float
    image: np.ndarray


@dataclass
class SourceReport:
    """What a source gave: frames read from it, kept (after `every` / `fps`), dropped (a live source that ran ahead
    of the model), the frame count a file's header declares, and how it ended (`end`, `ended-early`, `stalled`,
    `unopenable`, `interrupted`, or `stopped` by the caller)."""

    name: str
    live: bool
    read: int = 0
    kept: int = 0
    dropped: int = 0
    declared: int | None = None
    ended: str | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not None}


class VideoSource:
    """The frames of a video file, a stream URL or a camera (an int, or "camera:N"), RGB, read through OpenCV.

    every: keep one frame in N; fps: keep frames at most this often (by their timestamps); timeout_s: a stream or
    camera that gives no frame for this long has stalled. Iterating reads in the caller's thread; `runtimes.stream`
    reads in a thread of its own while the model runs, and drops the oldest waiting frames of a live source that
    runs ahead (counted in `report.dropped`).
    """

    def __init__(self, source: str | int, *, every: int = 1, fps: float | None = None, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InputError(f"every must be a whole number >= 1, got {every!r}")
        if fps is not None and not (isinstance(fps, (int, float)) and fps > 0):
            raise InputError(f"fps must be a number > 0, got {fps!r}")
        if not timeout_s > 0:
            raise InputError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.camera = source if isinstance(source, int) else None
        self.name = f"camera {source}" if isinstance(source, int) else str(source)
        self.live = isinstance(source, int) or is_stream_url(str(source))
        if not self.live and not os.path.isfile(self.name):
            what = (
                "is a folder, not a video file"
                if os.path.isdir(self.name)
                else "is not a regular file (a FIFO, device or socket), so not a video file"
                if os.path.exists(self.name)
                else "no such video file"
            )
            raise InputError(f"{self.name}: {what}")
        self.every, self.fps, self.timeout_s = every, fps, float(timeout_s)
        self.report = SourceReport(self.name, self.live)
        self._cap: Any = None

    def open(self) -> None:
        """Open the source; `StreamError` naming it when it cannot be (refused before any frame)."""
        cv2 = opencv()
        ms = int(self.timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        cap = cv2.VideoCapture(self.camera, cv2.CAP_ANY, params) if self.camera is not None else cv2.VideoCapture(self.name, cv2.CAP_FFMPEG, params)
        if not cap.isOpened():
            cap.release()
            self.report.ended = "unopenable"
            what = (
                "no camera with this index, or it is busy"
                if self.camera is not None
                else "the stream did not answer (wrong URL, server down or refused)"
                if self.live
                else "not a readable video (an unfinished recording whose index was never written cannot be read)"
            )
            self.report.error = f"{self.name}: cannot be opened: {what}"
            raise StreamError(self.report.error)
        from .options import max_image_pixels

        width, height = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_image_pixels():  # the image limit applies to frames: refused before one is decoded
            cap.release()
            self.report.ended = "unopenable"
            self.report.error = (
                f"{self.name}: frames of {width}x{height} ({width * height / 1e6:.1f} MP) are larger than the {max_image_pixels() / 1e6:.0f} MP "
                "an image may have (EDGE_TRANSFER_MAX_IMAGE_PIXELS raises it)"
            )
            raise StreamError(self.report.error)
        count = cap.get(cv2.CAP_PROP_FRAME_COUNT)
        if not self.live and count > 0:
            self.report.declared = int(count)
        self._cap = cap

    def _keep(self, index: int, time_s: float, last_kept: float | None) -> bool:
        if index % self.every:
            return False
        return self.fps is None or last_kept is None or time_s - last_kept >= 1.0 / self.fps - 1e-6

    def frames(self) -> Iterator[Frame]:
        """Open (if not yet), then yield the kept frames; at the end, raise `StreamError` for a file that ended
        before its declared frames or a live source that stalled, and return for a complete file."""
        if self._cap is None:
            self.open()
        from .options import max_image_pixels

        cv2 = opencv()
        cap, started = self._cap, time.monotonic()
        self._max_pixels = max_image_pixels()
        last_kept: float | None = None
        try:
            while True:
                asked = time.monotonic()
                ok, bgr = cap.read()
                if not ok or bgr is None:
                    self._finish(time.monotonic() - asked)
                    return
                if bgr.shape[0] * bgr.shape[1] > self._max_pixels:  # a stream that grows its frames mid-way
                    self.report.ended = "refused"
                    self.report.error = f"{self.name}: frame {self.report.read} is {bgr.shape[1]}x{bgr.shape[0]}, over the image pixel limit"
                    raise StreamError(self.report.error)
                index = self.report.read
                self.report.read += 1
                time_s = time.monotonic() - started if self.live else cap.get(cv2.CAP_PROP_POS_MSEC) / 1000.0
                if not self._keep(index, time_s, last_kept):
                    continue
                last_kept = time_s
                self.report.kept += 1
                image = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB) if bgr.ndim == 3 and bgr.shape[2] == 3 else bgr  # BGR converted once
                yield Frame(index, round(time_s, 6), image)
        finally:
            self.close()

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def _finish(self, waited_s: float) -> None:
        """How the source ended, once `read` said no more frames."""
        r = self.report
        if self.live:
            r.ended = "stalled"
            silent = f"no frame for {waited_s:.1f} s" if waited_s >= 0.5 * self.timeout_s else "the source closed"
            r.error = f"{self.name}: {silent} after {r.read} frame(s) (stalled, disconnected or ended)"
            raise StreamError(r.error)
        if r.declared is not None and r.read < r.declared:
            r.ended = "ended-early"
            r.error = f"{self.name}: the video ended after {r.read} of the {r.declared} frames it declares (truncated or damaged)"
            raise StreamError(r.error)
        r.ended = "end"

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
