"""`predict` and `identify` on videos, streams and cameras, with torch blocked: real OpenCV decoding of files made
here, real HTTP streams served here (stalled and interrupted), and the pipelined library API under them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import BackendUnavailableError, StreamError
from runtimes.gallery import Gallery
from runtimes.video import Frame, SourceReport, VideoSource

from conftest import BLOCK_HOST_PACKAGES, ROOT, run_cli

cv2 = pytest.importorskip("cv2", reason="the [video] extra (opencv-python-headless) is not installed")


def digit_frames(count: int) -> Iterator[np.ndarray]:
    """480x640 RGB frames showing the built-in digits as the suite trains on them (dark ink on white), 30 frames per
    digit (0, 1, 2, ...)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i in range(count):
        d = (i // 30) % 10
        img = 255 - np.rint(digits.images[int(np.flatnonzero(digits.target == d)[0])] * (255 / 16)).astype(np.uint8)  # ink on paper
        grey = cv2.resize(img, (480, 480), interpolation=cv2.INTER_NEAREST)
        frame = np.full((480, 640, 3), 255, np.uint8)
        frame[:, 80:560] = grey[:, :, None]
        yield frame


def write_video(path: Path, count: int, fourcc: str) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 30.0, (640, 480))
    assert writer.isOpened(), f"this OpenCV cannot write {fourcc}"
    for rgb in digit_frames(count):
        writer.write(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.mp4", 300, "mp4v")


@pytest.fixture(scope="module")
def avi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "clip.avi", 300, "MJPG")


def _lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_predict_runs_a_300_frame_mp4_without_torch_one_record_per_frame_then_a_summary(digits_bundle, clip):
    r = run_cli("predict", str(digits_bundle), str(clip), "--jsonl", "--top-k", "2", block_torch=True)
    assert r.returncode == 0, r.stderr
    records = _lines(r.stdout)
    assert len(records) == 300 and [x["frame"] for x in records] == list(range(300))
    assert records[30]["time_s"] == pytest.approx(1.0, abs=0.04) and len(records[0]["top_k"]) == 2
    assert "clip.mp4: 300 frame(s) answered of 300 read, 0 dropped" in r.stderr and "end of input" in r.stderr
    assert "p50 per frame: read" in r.stderr and "model" in r.stderr
    # the answers are what predict gives the same decoded frames one by one (BGR converted once, the same resize)
    cap = cv2.VideoCapture(str(clip))
    with runtimes.load(digits_bundle) as p:
        for i in (0, 45, 299):
            cap.set(cv2.CAP_PROP_POS_FRAMES, i)
            ok, bgr = cap.read()
            top = p.predict(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB), top_k=2)[0]
            assert [c["label"] for c in records[i]["top_k"]] == [c.label for c in top]
            assert records[i]["top_k"][0]["score"] == pytest.approx(top[0].score, abs=1e-6)
    every = run_cli("predict", str(digits_bundle), str(clip), "--jsonl", "--every", "3", block_torch=True)
    assert every.returncode == 0, every.stderr
    assert [x["frame"] for x in _lines(every.stdout)] == list(range(0, 300, 3))
    assert "100 frame(s) answered of 300 read" in every.stderr
    fps = run_cli("predict", str(digits_bundle), str(clip), "--jsonl", "--fps", "2")
    assert [x["frame"] for x in _lines(fps.stdout)] == list(range(0, 300, 15))  # a 30 fps clip at 2 frames per second


def test_identify_runs_the_video_against_a_gallery_without_torch(embedding_bundles, clip, tmp_path):
    bundle = embedding_bundles["onnx"]
    frames = list(digit_frames(300))
    with runtimes.load(bundle) as p:
        g = Gallery.for_bundle(p)
        for d in range(5):  # digits 0-4 enrolled; the clip's digits 5-9 never were
            g.enroll(str(d), p.embed(frames[30 * d : 30 * d + 3]))
        gallery = g.save(tmp_path / "g.npz")
    r = run_cli("identify", str(bundle), str(clip), "--gallery", str(gallery), "--jsonl", "--every", "3", block_torch=True)
    assert r.returncode == 0, r.stderr
    records = _lines(r.stdout)
    assert len(records) == 100 and all({"source", "frame", "time_s", "label", "known", "score", "nearest"} <= set(x) for x in records)
    enrolled = [x for x in records if x["frame"] < 150]
    assert np.mean([x["nearest"] == str(x["frame"] // 30) for x in enrolled]) > 0.9
    assert "100 frame(s) answered of 300 read" in r.stderr


def test_a_truncated_video_answers_its_frames_then_one_error_line(digits_bundle, avi, clip, tmp_path):
    cut = tmp_path / "cut.avi"
    cut.write_bytes(avi.read_bytes()[: avi.stat().st_size // 2])  # a recorder that lost power half-way
    r = run_cli("predict", str(digits_bundle), str(cut), "--jsonl", block_torch=True)
    assert r.returncode == 1
    got = len(_lines(r.stdout))
    assert 50 < got < 300
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {cut}: the video ended after {got} of the 300 frames it declares (truncated or damaged)"]
    assert "ended early" in r.stderr
    mp4 = tmp_path / "cut.mp4"  # an MP4 cut before its index was written cannot be opened at all: said so, by name
    mp4.write_bytes(clip.read_bytes()[: clip.stat().st_size // 2])
    r = run_cli("predict", str(digits_bundle), str(mp4))
    assert r.returncode == 1 and r.stdout == ""
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {mp4}: cannot be opened: not a readable video (an unfinished recording whose index was never written cannot be read)"
    ]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_dead_stream_url_gives_one_error_line(digits_bundle):
    url = f"rtsp://127.0.0.1:{_closed_port()}/camera"
    r = run_cli("predict", str(digits_bundle), url, "--jsonl", block_torch=True)
    assert r.returncode == 1 and r.stdout == ""
    assert [line for line in r.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {url}: cannot be opened: the stream did not answer (wrong URL, server down or refused)"
    ]


class _Trickle(BaseHTTPRequestHandler):
    """Serves the AVI as a live camera would: `rate` bytes per 50 ms, going silent after `stall_after` bytes."""

    data = b""
    rate = 1 << 30
    stall_after: int | None = None

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.end_headers()
        sent, limit = 0, self.stall_after or len(self.data)
        try:
            while sent < limit:
                self.wfile.write(self.data[sent : min(limit, sent + self.rate)])
                self.wfile.flush()
                sent += self.rate
                time.sleep(0.05)
            time.sleep(30)  # silent, connection open: a stalled camera
        except (BrokenPipeError, ConnectionResetError):
            pass

    def log_message(self, *args: object) -> None:
        pass


def _serve(data: bytes, rate: int, stall_after: int | None) -> ThreadingHTTPServer:
    handler = type("Handler", (_Trickle,), {"data": data, "rate": rate, "stall_after": stall_after})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_stream_that_stalls_is_reported_after_its_frames(digits_bundle, avi):
    data = avi.read_bytes()
    server = _serve(data, rate=len(data), stall_after=len(data) // 3)
    try:
        url = f"http://127.0.0.1:{server.server_port}/live.avi"
        t0 = time.monotonic()
        r = run_cli("predict", str(digits_bundle), url, "--jsonl", "--stall-timeout", "1", block_torch=True)
        assert time.monotonic() - t0 < 25
    finally:
        server.shutdown()
    assert r.returncode == 1
    got = len(_lines(r.stdout))
    assert got > 20
    answered, read, dropped = map(int, re.search(r"(\d+) frame\(s\) answered of (\d+) read, (\d+) dropped", r.stderr).groups())
    assert answered == got and answered + dropped == read  # a live source that bursts ahead loses its oldest frames, counted
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"no frame for 1.0 s after {read} frame(s) (stalled, disconnected or ended)" in errors[0], r.stderr


def test_ctrl_c_on_a_live_stream_prints_the_summary(digits_bundle, avi):
    data = avi.read_bytes()
    server = _serve(data, rate=len(data) // 200, stall_after=None)  # 300 frames over ~10 s: about 30 frames/s
    url = f"http://127.0.0.1:{server.server_port}/live.avi"
    code = "import sys\n" + BLOCK_HOST_PACKAGES + "from edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "predict", str(digits_bundle), url, "--jsonl"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        seen = [proc.stdout.readline() for _ in range(5)]  # answering frames
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
        server.shutdown()
    assert proc.returncode == 130, err
    records = _lines("".join(seen) + out)
    assert len(records) >= 5 and [x["frame"] for x in records] == sorted(x["frame"] for x in records)
    summary = [line for line in err.splitlines() if "frame(s) answered" in line]
    assert len(summary) == 1 and "stopped by Ctrl-C" in summary[0] and f"{len(records)} frame(s) answered" in summary[0]


class _LiveCamera:
    """A camera stand-in (no camera exists here): a live source that makes frames faster than the model takes
    them, as `VideoSource` does for --camera."""

    live, timeout_s, name = True, 5.0, "camera 0"

    def __init__(self, count: int) -> None:
        self.count = count
        self.report = SourceReport(self.name, live=True)

    def frames(self) -> Iterator[Frame]:
        for i, img in enumerate(digit_frames(self.count)):
            self.report.read += 1
            self.report.kept += 1
            yield Frame(i, i / 30, img)
        self.report.ended = "end"


def test_the_pipeline_keeps_order_and_drops_the_oldest_frames_of_a_live_source_that_runs_ahead(digits_bundle):
    with runtimes.load(digits_bundle) as p:
        frames = list(digit_frames(40))
        expected = [top[0].label for top in p.predict(frames, top_k=1)]
        run = p.stream(frames, top_k=1)  # a list: nothing is dropped, answers as predict gives them, in order
        got = [r.answer[0].label for r in run]
        assert got == expected and run.summary()["source"]["dropped"] == 0
        assert set(run.summary()["p50_ms"]) == {"read", "prepare", "model"}

        def slow(logits):
            time.sleep(0.03)  # a model slower than the camera
            return p.classify(logits, 1)

        camera = _LiveCamera(60)
        run = p.stream(camera, answer=slow, depth=2)
        indices = [r.frame.index for r in run]
        s = run.summary()
    assert indices == sorted(indices) and s["source"]["dropped"] > 0
    assert len(indices) + s["source"]["dropped"] == 60 and s["frames"] == len(indices)


def test_video_without_opencv_is_refused_naming_the_extra(digits_bundle, clip, monkeypatch):
    code = "import sys\nsys.modules['cv2'] = None\n" + BLOCK_HOST_PACKAGES + "from edge_transfer.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    r = subprocess.run([sys.executable, "-c", code, "predict", str(digits_bundle), str(clip)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""  # refused before any source is opened: no summary of 0 frames
    assert "pip install 'edge-transfer-runtime[video]'" in r.stderr and r.stderr.count("error:") == 1 and "frame(s)" not in r.stderr
    monkeypatch.setitem(sys.modules, "cv2", None)
    with pytest.raises(BackendUnavailableError, match=r"edge-transfer-runtime\[video\]"):
        list(runtimes.load(digits_bundle).stream(VideoSource(str(clip))))


def test_bad_video_arguments_are_refused_by_name(digits_bundle, clip, tmp_path):
    r = run_cli("predict", str(digits_bundle), str(clip), str(tmp_path / "a.png"))
    assert r.returncode != 0 and "separate commands" in r.stderr
    r = run_cli("predict", str(digits_bundle), str(tmp_path / "missing.mp4"))
    assert r.returncode != 0 and "missing.mp4: no such video file" in r.stderr
    r = run_cli("predict", str(digits_bundle), str(clip), "--every", "0")
    assert r.returncode == 2 and "--every must be >= 1" in r.stderr
    for value in ("inf", "3e6", "1e12", "nan", "0"):
        r = run_cli("predict", str(digits_bundle), str(clip), "--stall-timeout", value)
        assert r.returncode == 2 and r.stderr.startswith("error: --stall-timeout must be") and "Traceback" not in r.stderr, r.stderr
    (tmp_path / "folder.mp4").mkdir()
    r = run_cli("predict", str(digits_bundle), str(tmp_path / "folder.mp4"))
    assert r.returncode == 2 and "folder.mp4: is a folder, not a video file" in r.stderr, r.stderr
    os.mkfifo(tmp_path / "pipe.mp4")
    r = run_cli("predict", str(digits_bundle), str(tmp_path / "pipe.mp4"))
    assert r.returncode == 2 and "pipe.mp4: is not a regular file" in r.stderr, r.stderr
    with pytest.raises(StreamError):
        list(runtimes.load(digits_bundle).stream(VideoSource(f"rtsp://127.0.0.1:{_closed_port()}/x")))


def test_the_camera_example_announces_what_the_video_shows_without_torch(digits_bundle, clip):
    code = "import runpy, sys\n" + BLOCK_HOST_PACKAGES + "sys.argv = ['camera.py'] + sys.argv[1:]\n"
    code += f"runpy.run_path({str(ROOT / 'examples' / 'camera.py')!r}, run_name='__main__')\n"
    r = subprocess.run(
        [sys.executable, "-c", code, str(digits_bundle), "--source", str(clip), "--every", "2"], capture_output=True, text=True, timeout=300
    )
    assert r.returncode == 0, r.stderr
    said = [line for line in r.stdout.splitlines() if " s  frame " in line]
    assert r.stdout.startswith("self-test on") and len(said) >= 3  # the clip shows ten digits in turn
    assert "150 frame(s) answered of 300 read" in r.stderr


def test_frames_over_the_image_pixel_limit_are_refused_before_decoding(digits_bundle, avi):
    r = run_cli("predict", str(digits_bundle), str(avi), env={"EDGE_TRANSFER_MAX_IMAGE_PIXELS": str(640 * 480 - 1)})
    assert r.returncode == 1 and "frames of 640x480 (0.3 MP) are larger than the" in r.stderr and r.stdout == "", r.stderr


def test_stream_statistics_stay_bounded_over_a_long_run():
    from runtimes.stream import Reservoir

    r = Reservoir(size=100)
    for i in range(100_000):
        r.add(float(i % 10))
    assert len(r.sample) == 100 and r.seen == 100_000 and 3 <= float(np.median(r.sample)) <= 6
