"""A camera application: classify what a camera (or a video file, or an rtsp:// / http:// stream) shows, and say when
it changes. Needs `runtimes`, one backend and OpenCV (pip install 'edge-transfer-runtime[onnxruntime,video]'); no torch.

    python examples/camera.py BUNDLE --camera 0
    python examples/camera.py BUNDLE --source rtsp://192.168.1.20/stream --min-score 0.6
    python examples/camera.py BUNDLE --source clip.mp4 --every 5

It runs the bundle's self-test first (does this device compute what was validated on the host?), then reads frames
in a thread while the model runs (`Predictor.stream`). A label is announced when it has been the top answer for
`--steady` frames in a row, at `--min-score` or more. Ctrl-C stops it with a summary.
"""

from __future__ import annotations

import argparse
import sys

import runtimes
from runtimes.stream import summary_line


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bundle")
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, help="camera index (0 is the first)")
    src.add_argument("--source", help="a video file or a stream URL")
    ap.add_argument("--every", type=int, default=1, help="classify one frame in N (default 1)")
    ap.add_argument("--min-score", type=float, default=0.5, help="announce labels scored at least this (default 0.5)")
    ap.add_argument("--steady", type=int, default=3, help="frames in a row a label must lead before it is announced (default 3)")
    args = ap.parse_args()

    try:
        predictor = runtimes.load(args.bundle)
        print(predictor.self_test().summary(), flush=True)
        video = runtimes.VideoSource(args.camera if args.camera is not None else args.source, every=args.every)
    except runtimes.EdgeTransferError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    run = predictor.stream(video, top_k=1)
    shown, candidate, streak, code = None, None, 0, 0
    try:
        for r in run:
            top = r.answer[0]
            label = top.label if top.score >= args.min_score else None  # not sure: nothing to announce
            streak = streak + 1 if label == candidate else 1
            candidate = label
            if streak == args.steady and label != shown:
                shown = label
                print(
                    f"{r.frame.time_s:8.2f} s  frame {r.frame.index}: {label or 'nothing certain'}" + (f" ({top.score:.0%})" if label else ""),
                    flush=True,
                )
    except KeyboardInterrupt:
        video.report.ended = "interrupted"
        code = 130
    except runtimes.StreamError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 1
    finally:
        run.stop()
        predictor.close()
    print(summary_line(run.summary()), file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
