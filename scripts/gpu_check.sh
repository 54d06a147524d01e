#!/usr/bin/env bash
# Check edge-transfer on an NVIDIA machine: TensorRT engines (fp32/fp16/int8) against ONNX Runtime fp32, and every
# hardware test. Made for a Jetson (JetPack's TensorRT) or any CUDA box with TensorRT installed:
#   bash scripts/gpu_check.sh              # from the repository root, with edge-transfer installed
#   bash scripts/gpu_check.sh --cuda-only  # a GPU without TensorRT: the CUDA tests only (training, ORT CUDA provider)
# It installs nothing. It requires an NVIDIA GPU, TensorRT and a cuda-python whose major matches the driver's CUDA
# major (see README, "TensorRT"), says which versions it found, and exits non-zero when any of them is missing
# ("nothing tested"), when any step fails, or when a TensorRT test skipped although TensorRT and a GPU are here.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
MODE=full
[ "${1:-}" = "--cuda-only" ] && MODE=cuda-only
WORK=$(mktemp -d -t gpu-check-XXXXXX)
trap 'rm -rf "$WORK"' EXIT
status=0

echo "== machine"
GPU_CHECK_MODE=$MODE "$PY" - <<'PYEOF' || exit 3
import importlib.util, os, platform, sys

def nothing_tested(why):
    print(f"gpu_check: nothing tested: {why}", file=sys.stderr)
    sys.exit(3)

print("python     ", platform.python_version(), platform.machine())
try:
    import torch
    print("torch      ", torch.__version__, "cuda", torch.cuda.is_available(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except ImportError:
    torch = None
try:
    import onnxruntime as ort
    print("onnxruntime", ort.__version__, ort.get_available_providers())
except ImportError:
    pass
if os.environ["GPU_CHECK_MODE"] == "cuda-only":
    if torch is None or not torch.cuda.is_available():
        nothing_tested("no CUDA device visible to torch")
    sys.exit(0)
if importlib.util.find_spec("tensorrt") is None:
    nothing_tested("TensorRT is not installed (JetPack provides it; on x86 pip install 'edge-transfer[tensorrt-cu12]' "
                   "or -cu13 from NVIDIA's index); run with --cuda-only to test the CUDA paths alone")
from runtimes.errors import EdgeTransferError
from runtimes.engines.tensorrt_build import cuda_python_version, running_target, tensorrt_cuda_major
print("cuda-python", cuda_python_version(), "| TensorRT built for CUDA", tensorrt_cuda_major() or "? (system TensorRT)")
try:
    target = running_target(0)
except EdgeTransferError as exc:
    nothing_tested(str(exc))
print("tensorrt   ", target.tensorrt_version, "on", target.gpu_name, target.sm,
      "integrated" if target.integrated else "discrete", f"{target.dla_cores} DLA core(s)")
PYEOF

junit_counts() {  # "tests failures errors skipped" of a pytest junit XML
    "$PY" -c "import sys, xml.etree.ElementTree as E; s = E.parse(sys.argv[1]).getroot(); s = s.find('testsuite') if s.tag == 'testsuites' else s; print(*(s.get(k) for k in ('tests', 'failures', 'errors', 'skipped')))" "$1"
}

echo "== CUDA tests (cuda marker: training step, ONNX Runtime CUDA provider)"
"$PY" -m pytest -q -rs -m "cuda and not tensorrt" tests/ --junitxml="$WORK/cuda.xml" || status=1
read -r n f e s < <(junit_counts "$WORK/cuda.xml")
[ "${n:-0}" -gt "${s:-0}" ] || { echo "gpu_check: FAILED: every CUDA test skipped" >&2; status=1; }

echo "== trained on the GPU, run on the CPU (digits finetune, 64 px, 2 epochs; the ONNX bundle against torch on CUDA)"
GPU_CHECK_WORK=$WORK "$PY" - <<'PYEOF' || status=1
import os, sys, time
from pathlib import Path
import numpy as np
import torch
import edge_transfer as et
import runtimes
from edge_transfer.data import load_digits_dataset, stratified_split
from edge_transfer.sources import load_run

work = Path(os.environ["GPU_CHECK_WORK"])
t = time.perf_counter()
run = et.train("digits", out=work / "ft", strategy="finetune", image_size=64, epochs=2, device="cuda", progress=False)
train_s = time.perf_counter() - t
(bundle,) = et.export(run.path, out=work / "ft-onnx", format="onnx")
ds = load_digits_dataset()
split = stratified_split(ds.targets, seed=0)
cfg = runtimes.read_manifest(bundle.path).preprocessing
images, targets = ds.prepared_batch(split.test, cfg), ds.targets[split.test]
from contextlib import nullcontext
from edge_transfer.distributed import full_float32

model = load_run(run.path)[0].eval().cuda()
def on_gpu(numerics, x):
    with torch.inference_mode(), numerics:
        return torch.cat([model(torch.from_numpy(x[s:s + 128]).cuda()).float().cpu() for s in range(0, len(x), 128)]).numpy()
with runtimes.load(bundle.path) as p:
    cpu = p.run_chunked(images)
    # the epoch training kept was chosen on validation accuracy computed on the GPU; the bundle's, on the CPU
    bundle_val = float((p.run_chunked(ds.prepared_batch(split.val, cfg)).argmax(1) == ds.targets[split.val]).mean())
print(f"trained on {run.config['training']['device']} ({run.config['training']['mixed_precision']}) in {train_s:.1f} s; "
      f"bundle on CPU: test accuracy {100 * (cpu.argmax(1) == targets).mean():.2f}%, export gate passed: {bundle.validation['passed']}")
gpu = {}
for name, numerics in (("fp32 (full_float32)", full_float32()), ("PyTorch defaults (TF32 conv)", nullcontext()),
                       ("bf16 autocast", torch.autocast("cuda", dtype=torch.bfloat16))):
    gpu[name] = on_gpu(numerics, images)
    print(f"  torch-cuda {name:29s} accuracy {100 * (gpu[name].argmax(1) == targets).mean():6.2f}% | agrees with the bundle "
          f"{100 * (gpu[name].argmax(1) == cpu.argmax(1)).mean():6.2f}% | max|diff| {np.abs(gpu[name] - cpu).max():.4f}")
best = max(run.history, key=lambda r: (r["val_accuracy"], -r["val_loss"]))
print(f"  val accuracy: training reported {100 * best['val_accuracy']:.2f}% (epoch {best['epoch']}, on the GPU) | bundle on CPU {100 * bundle_val:.2f}%")
agree = float((gpu["fp32 (full_float32)"].argmax(1) == cpu.argmax(1)).mean())
if agree < 0.99 or not bundle.validation["passed"] or abs(best["val_accuracy"] - bundle_val) > 0.01:
    print("gpu_check: FAILED: the CPU bundle does not answer as the CUDA-trained model does in fp32", file=sys.stderr)
    sys.exit(1)
PYEOF

if [ "$MODE" = full ]; then
    echo "== TensorRT tests (tensorrt marker)"
    "$PY" -m pytest -q -rs -m tensorrt tests/ --junitxml="$WORK/trt.xml" || status=1
    read -r n f e s < <(junit_counts "$WORK/trt.xml")
    if [ "${s:-0}" != 0 ]; then echo "gpu_check: FAILED: $s TensorRT test(s) skipped on a machine with TensorRT and a GPU" >&2; status=1; fi

    echo "== TensorRT parity (digits linear probe, 64 px: engines vs ONNX Runtime fp32 on the test split)"
    GPU_CHECK_WORK=$WORK "$PY" - <<'PYEOF' || status=1
import os, sys, time
from pathlib import Path
import numpy as np
import edge_transfer as et
import runtimes
from edge_transfer.data import load_digits_dataset, stratified_split
from runtimes.backends.onnxruntime_backend import OnnxRuntimePredictor

work = Path(os.environ["GPU_CHECK_WORK"])
run = et.train("digits", out=work / "run", strategy="linear-probe", image_size=64, progress=False)
results = et.export(run.path, out=work / "bundles", format="tensorrt,tensorrt-fp16,tensorrt-int8", calibration_size=256)
ds = load_digits_dataset()
test = stratified_split(ds.targets, seed=0).test
cfg = runtimes.read_manifest(results[0].path).preprocessing
images, targets = ds.prepared_batch(test, cfg), ds.targets[test]
ref = OnnxRuntimePredictor(runtimes.open_bundle(results[0].path)).run_chunked(images)
floor = {"fp32": 0.99, "fp16": 0.99, "int8": 0.95}
print(f"{'format':14s} {'build s':>8s} {'accuracy':>9s} {'agree':>8s} {'max|diff|':>9s} {'p50 ms b1':>9s} {'graph ms b1':>11s}")
failed = []
for r in results:
    t = time.perf_counter()
    with runtimes.load(r.path, cache_dir=str(work / "engines")) as p:
        build = time.perf_counter() - t
        out = p.run_chunked(images)
        lat = []
        for _ in range(100):
            t1 = time.perf_counter(); p.run(images[:1]); lat.append(time.perf_counter() - t1)
    with runtimes.load(r.path, cache_dir=str(work / "engines"), cuda_graph=True) as g:
        assert np.allclose(g.run_chunked(images), out, atol=1e-3), f"{r.format}: CUDA-graph results differ"
        glat = []
        for _ in range(100):
            t1 = time.perf_counter(); g.run(images[:1]); glat.append(time.perf_counter() - t1)
    agree, precision = float((out.argmax(1) == ref.argmax(1)).mean()), runtimes.read_manifest(r.path).precision
    print(f"{r.format:14s} {build:8.1f} {100 * (out.argmax(1) == targets).mean():8.2f}% {100 * agree:7.2f}% "
          f"{np.abs(out - ref).max():9.4f} {1000 * np.median(lat):9.3f} {1000 * np.median(glat):11.3f}")
    if agree < floor[precision]:
        failed.append(f"{r.format} agrees {100 * agree:.2f}% with ONNX Runtime fp32 (needs {100 * floor[precision]:.0f}%)")
for line in failed:
    print(f"gpu_check: FAILED: {line}", file=sys.stderr)
sys.exit(1 if failed else 0)
PYEOF
fi

if [ $status -ne 0 ]; then echo "gpu_check: FAILED (see above)" >&2; else echo "gpu_check: all steps passed ($MODE)"; fi
exit $status
