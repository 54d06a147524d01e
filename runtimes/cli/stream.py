"""`predict` and `identify` on video files, streams and cameras: frame by frame through `runtimes.stream` (torch-free)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from runtimes.errors import EdgeTransferError, InputError, install_hint

from .output import err


def add_stream_options(parser: argparse.ArgumentParser) -> None:
    """The video options shared by predict and identify."""
    v = parser.add_argument_group(
        f"video, streams and cameras (needs OpenCV: {install_hint('video')})",
        "Give video files (.mp4, .avi, .mov, .mkv, ...) or stream URLs (rtsp://, http://, ...) in place of images, or --camera N. "
        "Frames are read and resized in a thread while the model runs; one result per frame (--jsonl: one JSON line "
        "each, with its frame index and time), then a summary on stderr: frames, frames/s, the median milliseconds "
        "per stage, dropped frames and how the source ended. Ctrl-C stops and prints the summary.",
    )
    v.add_argument("--camera", type=int, metavar="N", help="read frames from camera N (0 is the first)")
    v.add_argument("--every", type=int, default=1, metavar="N", help="answer one frame in N (default: every frame)")
    v.add_argument("--fps", type=float, metavar="F", help="answer at most F frames per second of video (by the frames' timestamps)")
    v.add_argument(
        "--stall-timeout",
        type=float,
        default=10.0,
        metavar="S",
        help="a stream or camera that gives no frame for S seconds has stalled: report it and stop (default 10)",
    )


def stream_sources(args: argparse.Namespace) -> list[str | int] | None:
    """The video sources `predict` / `identify` were given (a camera index or file/URL names), or None for images.
    Videos and images are not mixed in one command."""
    from runtimes.video import is_video_input

    items = list(getattr(args, "images", None) or [])
    if args.camera is not None:
        if items:
            raise InputError(f"--camera reads a camera; give files ({items[0]}) in another command")
        if args.camera < 0:
            raise InputError(f"--camera: a camera index (0, 1, ...), got {args.camera}")
        return [args.camera]
    videos = [i for i in items if is_video_input(i)]
    if not videos:
        if args.every != 1 or args.fps is not None:
            raise InputError("--every and --fps are for videos, streams and cameras; no video was given")
        return None
    if len(videos) != len(items):
        image = next(i for i in items if not is_video_input(i))
        raise InputError(f"give videos and images in separate commands ({videos[0]} is a video, {image} is not)")
    return list(videos)


def run_streams(
    args: argparse.Namespace,
    predictor: Any,
    sources: Sequence[str | int],
    answer: Callable[[Any], Sequence[Any]],
    record_of: Callable[[Any], dict[str, Any]],
    line_of: Callable[[Any], str],
    header: dict[str, Any],
) -> int:
    """Run each source through `predictor.stream`, printing a line (or JSON record) per frame and a summary per
    source on stderr. A source that cannot be opened, ends early or stalls gets one `error:` line after its frames.
    Returns the exit code (1 when a source failed, 130 after Ctrl-C)."""
    from runtimes.stream import summary_line
    from runtimes.video import VideoSource, opencv

    if predictor.modality != "image":
        raise InputError(f"{args.bundle} is a {predictor.modality} bundle: videos and cameras are for image bundles")
    opencv()  # a missing [video] extra is a refusal (exit 2), before any source is opened or summarised
    failed, records, summaries = 0, [], []
    for source in sources:
        video = VideoSource(source, every=args.every, fps=args.fps, timeout_s=args.stall_timeout)
        run = predictor.stream(video, answer=answer)
        problem: str | None = None
        try:
            for r in run:
                record = {"source": video.name, "frame": r.frame.index, "time_s": r.frame.time_s, **record_of(r.answer)}
                if args.jsonl:
                    print(json.dumps(record), flush=True)
                elif args.json:
                    records.append(record)
                else:
                    print(f"{video.name} frame {r.frame.index} ({r.frame.time_s:.2f} s): {line_of(r.answer)}", flush=True)
        except KeyboardInterrupt:
            run.stop()
            video.report.ended = "interrupted"
            summaries.append(run.summary())
            err(summary_line(summaries[-1]))
            _print_document(args, header, records, summaries)
            return 130
        except EdgeTransferError as exc:
            problem = str(exc)
        summaries.append(run.summary())
        err(summary_line(summaries[-1]))
        if problem is not None:
            err(f"error: {problem}")
            failed += 1
    _print_document(args, header, records, summaries)
    return 1 if failed else 0


def _print_document(args: argparse.Namespace, header: dict[str, Any], records: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> None:
    if args.json:
        from .output import print_json

        print_json({**header, "frames": records, "summaries": summaries})
    sys.stdout.flush()


def top_k_line(answer: Any, floor: float | None = None) -> str:
    """A classifier's top-k on one line ("unknown" first when the best is below `floor`)."""
    ranked = ", ".join(f"{c.label} {c.score:.1%}" for c in answer)
    return f"unknown (below {floor:.1%}): {ranked}" if floor is not None and answer[0].score < floor else ranked
