#!/usr/bin/env bash
# Run every hardware test (CUDA, TensorRT) on this machine and print a parity table of the TensorRT engines
# against ONNX Runtime. Made for a Jetson (JetPack's TensorRT) or any CUDA box with TensorRT installed:
#   bash scripts/gpu_check.sh            # from the repository root, with edge-transfer installed (make setup)
# Tests whose hardware is missing are reported as skipped with the reason, never as passed.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3

echo "== machine"
"$PY" - <<'PYEOF'
import importlib.util, platform
print("python", platform.python_version(), platform.machine())
for mod in ("torch", "tensorrt", "onnxruntime", "cuda"):
    print(f"{mod:12s}", "installed" if importlib.util.find_spec(mod) else "missing")
try:
    import torch
    print("torch cuda  ", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    pass
try:
    import onnxruntime as ort
    print("ORT providers", ort.get_available_providers())
except ImportError:
    pass
PYEOF

echo "== hardware tests (cuda, tensorrt markers)"
"$PY" -m pytest -q -rs -m "cuda or tensorrt" tests/
status=$?

echo "== TensorRT parity (digits demo model, fp32/fp16/int8 engines vs ONNX Runtime fp32)"
"$PY" - <<'PYEOF'
import sys, tempfile, time
from pathlib import Path
import numpy as np
try:
    import tensorrt  # noqa: F401
except ImportError as exc:
    print(f"skipped: TensorRT is not installed here ({exc})")
    sys.exit(0)
import edge_transfer as et
import runtimes
from runtimes.backends.onnxruntime_backend import OnnxRuntimePredictor

work = Path(tempfile.mkdtemp(prefix="gpu-check-"))
run = et.train("digits", out=work / "run", strategy="linear-probe", image_size=64)
results = et.export(run.path, out=work / "bundles", format="tensorrt,tensorrt-fp16,tensorrt-int8", allow_failed_validation=True)
from edge_transfer.data import load_digits_dataset, stratified_split
ds = load_digits_dataset()
test = stratified_split(ds.targets, seed=0).test
cfg = runtimes.read_manifest(results[0].path).preprocessing
images, targets = ds.prepared_batch(test, cfg), ds.targets[test]
ref = OnnxRuntimePredictor(runtimes.open_bundle(results[0].path)).run_chunked(images)
print(f"{'format':14s} {'build+load s':>12s} {'accuracy':>9s} {'agree vs ORT':>12s} {'max |diff|':>10s} {'p50 ms b1':>9s}")
for r in results:
    t = time.perf_counter()
    with runtimes.load(r.path, cache_dir=str(work / "engines")) as p:
        ready = time.perf_counter() - t
        out = p.run_chunked(images)
        lat = []
        for _ in range(50):
            t1 = time.perf_counter(); p.run(images[:1]); lat.append(time.perf_counter() - t1)
    print(f"{r.format:14s} {ready:12.1f} {100 * (out.argmax(1) == targets).mean():8.2f}% "
          f"{100 * (out.argmax(1) == ref.argmax(1)).mean():11.2f}% {np.abs(out - ref).max():10.4f} {1000 * np.median(lat):9.3f}")
PYEOF
exit $status
