#!/usr/bin/env python3
"""`make arm-test`: the device runtime on emulated aarch64, on bundles this host exported, answers compared with x86.

The runtime wheel and its extras run on Debian's arm64 CPython under qemu-user (scripts/arm_device.py) on two named
cores: a Cortex-A76 (int8 dot product and fp16 arithmetic, like Orin or a Raspberry Pi 5) and a Cortex-A72 (neither,
like a Raspberry Pi 4). Emulation gives Arm's answers (the backends run their Arm kernels), not Arm's speed.

On each core, for every CPU format of a 64 px digits classifier (onnx, onnx-fp16, onnx-int8 portable and
`--target-cpu arm64`, openvino, openvino-int8) and of a text classifier (all-MiniLM-L6-v2 with a head): `check` must
PASS, `predict` (image files, photos and JPEGs that take the reduced decode; texts) must give the host's answers within
the precision's tolerance (`ANSWERS`), and `val` the host's accuracy within it. Then an fp16 bundle with 5% larger
classifier weights (checksums re-made) must FAIL `check` on each core, and the newest OpenVINO is put in front: an
openvino-int8 bundle must be refused by name at load, before it answers.

Where the emulated device cannot be built here (no apt-get, no package registry), it prints SKIPPED and why, and
exits 0: a skip, never a pass. Exit 1 when any row fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arm_device import CORES, Core, EmulatedDevice, Unavailable  # noqa: E402

from runtimes.errors import OutputError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
HOST = Path(sys.executable).parent
# per precision: the least top-1 agreement with x86's answers, the most |score| may differ, and the most val accuracy
# may differ (points). fp32: kernel differences only. fp16: real fp16 arithmetic on the A76 (x86 and the A72 widen
# to f32). int8: Arm's int8 kernels and rounding.
ANSWERS = {"fp32": (1.0, 1e-3, 0.0), "fp16": (0.95, 0.05, 2.0), "int8": (0.9, 0.15, 5.0)}
IMAGE_FORMATS = "onnx,onnx-fp16,onnx-int8,openvino,openvino-int8"
TEXT_FORMATS = "onnx,onnx-fp16,onnx-int8,openvino"
# bundles whose answers are compared with another bundle's on x86: the arm64 target's own answers on an x86 host
# without VNNI come from saturating kernels, so its Arm answers are compared with the fp32 bundle's, by top-1
# agreement and val accuracy only (int8 scores differ from fp32 scores by more than int8 kernels differ)
REFERENCE = {"bundles/image-arm64": "bundles/image/onnx"}
TOPICS = {
    "money": "bank market shares price profit economy trade rates inflation budget",
    "music": "song album band concert guitar singer chart tour drummer lyrics",
    "sport": "football match goal team player win league coach season referee",
}


@dataclass
class Row:
    core: str
    bundle: str
    precision: str
    check: str = "-"
    agreement: float | None = None
    score_diff: float | None = None
    val: str = "-"
    seconds: float = 0.0
    problems: str = ""


HEADER = f"{'core':<11} {'bundle':<26} {'precision':<9} {'check':<6} {'top-1 = x86':<11} {'max score diff':<14} {'val (vs x86)':<16} {'s':>4}"


def format_row(r: Row) -> str:
    agreement = f"{100 * r.agreement:.1f}%" if r.agreement is not None else "-"
    diff = f"{r.score_diff:.4f}" if r.score_diff is not None else "-"
    name = r.bundle.removeprefix("bundles/") + (" *" if r.bundle in REFERENCE else "")
    return f"{r.core:<11} {name:<26} {r.precision:<9} {r.check:<6} {agreement:<11} {diff:<14} {r.val:<16} {r.seconds:>4.0f}"


def host(*args: str, cwd: Path) -> str:
    done = subprocess.run([str(HOST / "edge-transfer"), *args], cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"host: edge-transfer {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def make_data(work: Path) -> tuple[list[str], Path]:
    """Digits folders (train / val), photos and upscaled JPEGs to predict, and topic texts; returns the image files."""
    import random

    import numpy as np
    from PIL import Image
    from skimage import data as photos
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (img, y) in enumerate(zip(digits.images[:600], digits.target[:600])):
        folder = work / "digits" / ("val" if i % 5 == 0 else "train") / str(y)
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray((255 - img * 255 / 16).astype("uint8")).resize((32, 32)).save(folder / f"{i}.png")
    held_out = sorted((work / "digits/val").rglob("*.png"))
    for path in held_out[::3]:  # what `val` runs on the emulated cores (40 images: emulation is slow)
        (work / "device-val" / path.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, work / "device-val" / path.parent.name / path.name)
    files = [str(p.relative_to(work)) for p in held_out[1::6]]
    (work / "inputs").mkdir()
    for name in ("astronaut", "coffee", "chelsea"):
        Image.fromarray(np.asarray(getattr(photos, name)())).save(work / "inputs" / f"{name}.png")
        files.append(f"inputs/{name}.png")
    for i, path in enumerate(files[:3]):  # large JPEGs: the device decodes them reduced (draft), as the host does
        Image.open(work / path).convert("RGB").resize((1024, 1024)).save(work / "inputs" / f"big{i}.jpg", quality=90)
        files.append(f"inputs/big{i}.jpg")
    rnd = random.Random(0)
    for label, words in TOPICS.items():
        for split, count in (("topics", 30), ("topics-val", 6)):
            (work / split / label).mkdir(parents=True)
            for i in range(count):
                text = " ".join(rnd.choice(words.split()) for _ in range(rnd.randint(4, 24)))
                (work / split / label / f"{i:02d}.txt").write_text(text, encoding="utf-8")
    texts = [p.read_text(encoding="utf-8") for p in sorted((work / "topics-val").rglob("*.txt"))]
    (work / "texts.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return files, work / "texts.txt"


def text_encoder(work: Path, backbone: str) -> str:
    """`backbone`, or for "tiny" a small BERT (2 layers, 64-d, seeded weights) with all-MiniLM-L6-v2's tokenizer:
    the real tokenizer and graph on Arm at a size emulation runs in seconds (emulated fp16 arithmetic is slow)."""
    if backbone != "tiny":
        return backbone
    import torch
    from transformers import BertConfig, BertModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    from edge_transfer.text_encoder import minilm_dir

    folder = work / "tiny-bert"
    torch.manual_seed(0)
    config = BertConfig(vocab_size=30522, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    shutil.copyfile(minilm_dir() / "tokenizer.json", folder / "tokenizer.json")
    return str(folder)


def export_bundles(work: Path, text_backbone: str) -> dict[str, str]:
    """The host's bundles: {name: precision}, each in work/bundles/<name>."""
    host("train", "--data", "digits/train", "--image-size", "64", "--out", "run", "--quiet", cwd=work)
    host("export", "run", "--format", IMAGE_FORMATS, "--out", "bundles/image", "--quiet", cwd=work)
    # full 8-bit weights: x86 without VNNI saturates on them, so on such a host the gate fails; it is written anyway
    # and judged on the Arm cores, against the x86 fp32 answers (see REFERENCE)
    host(
        "export",
        "run",
        "--format",
        "onnx-int8",
        "--target-cpu",
        "arm64",
        "--out",
        "bundles/image-arm64",
        "--quiet",
        "--allow-failed-validation",
        cwd=work,
    )
    host("train", "--data", "topics", "--backbone", text_encoder(work, text_backbone), "--out", "text-run", "--quiet", cwd=work)
    host("export", "text-run", "--format", TEXT_FORMATS, "--out", "bundles/text", "--quiet", cwd=work)
    out = {}
    for manifest in sorted((work / "bundles").rglob("manifest.json")):
        out[str(manifest.parent.relative_to(work))] = json.loads(manifest.read_text())["model"]["precision"]
    return out


def answers(stdout: str) -> list[tuple[str, float]]:
    doc = json.loads(stdout)
    return [(p["top_k"][0]["label"], float(p["top_k"][0]["score"])) for p in doc["predictions"]]


def predict_args(bundle: str, files: list[str], texts: Path) -> list[str]:
    if bundle.startswith("bundles/text"):
        return ["predict", bundle, "--text-file", str(texts), "--json", "--top-k", "1"]
    return ["predict", bundle, *files, "--json", "--top-k", "1"]


def val_args(bundle: str) -> list[str]:
    return ["val", bundle, "--data", "topics-val" if bundle.startswith("bundles/text") else "device-val", "--json", "--quiet"]


def on_core(device: EmulatedDevice, core: Core, bundle: str, precision: str, reference: dict, work: Path, files: list[str], texts: Path) -> Row:
    """check, predict and val of `bundle` on `core`, judged against `reference` (x86's answers and val accuracy)."""
    row, t = Row(core.name, bundle, precision), time.perf_counter()
    cli = ["-m", "runtimes.cli"]
    checked = device.run(core, [*cli, "check", bundle], cwd=work)
    row.check = "PASS" if checked.returncode == 0 else ("FAIL" if checked.returncode == 1 else "error")
    problems = [] if checked.returncode == 0 else [(checked.stderr or checked.stdout).strip().splitlines()[-1][:300]]
    min_agree, max_diff, max_val = ANSWERS[precision]
    said = device.run(core, [*cli, *predict_args(bundle, files, texts)], cwd=work)
    if said.returncode != 0:
        problems.append(f"predict: {(said.stderr or said.stdout).strip()[-300:]}")
    else:
        got, want = answers(said.stdout), reference["predict"]
        row.agreement = sum(a[0] == b[0] for a, b in zip(got, want)) / len(want)
        row.score_diff = max(abs(a[1] - b[1]) for a, b in zip(got, want))
        if bundle in REFERENCE:
            max_diff = float("inf")
        if len(got) != len(want) or row.agreement < min_agree or row.score_diff > max_diff:
            problems.append(f"predict: agreement {row.agreement:.3f} (needs >= {min_agree}), score diff {row.score_diff:.4f} (needs <= {max_diff})")
    val = device.run(core, [*cli, *val_args(bundle)], cwd=work)
    if val.returncode != 0:
        problems.append(f"val: {(val.stderr or val.stdout).strip()[-300:]}")
    else:
        acc, host_acc = 100 * json.loads(val.stdout)["accuracy"], reference["val"]
        row.val = f"{acc:.2f}% ({acc - host_acc:+.2f})"
        if abs(acc - host_acc) > max_val + 1e-9:
            problems.append(f"val: {acc:.2f}% against {host_acc:.2f}% on x86 (may differ by {max_val} pt)")
    row.seconds, row.problems = time.perf_counter() - t, "; ".join(problems)
    return row


def perturb_fp16(work: Path, bundle: str) -> str:
    """A copy of the fp16 `bundle` whose classifier weights are 5% larger, with every checksum re-made (as a careless
    producer would): only the self-test can tell. Returns its path."""
    import hashlib

    import numpy as np
    import onnx
    from onnx import numpy_helper

    out = work / "bundles/perturbed-fp16"
    shutil.copytree(work / bundle, out)
    model = onnx.load(out / "model.onnx")
    head = next(t for t in model.graph.initializer if t.name.startswith("head") and t.name.endswith("weight"))
    head.CopyFrom(numpy_helper.from_array((numpy_helper.to_array(head) * np.float16(1.05)).astype(np.float16), head.name))
    onnx.save(model, out / "model.onnx")
    doc = json.loads((out / "manifest.json").read_text())
    for entry in doc["model"]["files"]:
        data = (out / entry["path"]).read_bytes()
        entry.update(sha256=hashlib.sha256(data).hexdigest(), bytes=len(data))
    (out / "manifest.json").write_text(json.dumps(doc, indent=2))
    return str(out.relative_to(work))


def perturbed_fails(device: EmulatedDevice, core: Core, bundle: str, work: Path) -> str | None:
    """None when `check` fails the perturbed fp16 bundle on `core` (exit 1, logits drifted); else what it did."""
    done = device.run(core, ["-m", "runtimes.cli", "check", bundle], cwd=work)
    said = (done.stderr + done.stdout).strip()
    if done.returncode == 1 and "logits drifted beyond tolerance" in said:
        line = next((ln for ln in said.splitlines() if ln.startswith("self-test on")), said.splitlines()[-1])
        print(f"perturbed fp16 on {core.name}: FAIL, as it must: {line}", flush=True)
        return None
    return f"the perturbed fp16 bundle was not failed on {core.name} (exit {done.returncode}): {said[-400:]}"


def newest_openvino_refused(device: EmulatedDevice, core: Core, bundle: str, work: Path) -> str | None:
    """None when the newest OpenVINO, put in front of the device's, refuses `bundle` at load by name; else why not."""
    site = device.cache / "site-openvino-newest"
    if not (site / "openvino").is_dir():
        device.pip_target(site, ["openvino>=2025.4", "openvino-telemetry"], no_deps=True)
    done = device.run(core, ["-m", "runtimes.cli", "check", bundle], cwd=work, front=site)
    said = (done.stderr + done.stdout).strip()
    if done.returncode == 2 and "gives wrong int8 answers on Arm CPUs" in said:
        print(f"\nnewest OpenVINO on {core.name}, {bundle}: refused before it answered:\n  {said.splitlines()[-1]}")
        return None
    return f"the newest OpenVINO was not refused on {core.name} (exit {done.returncode}): {said[-400:]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cache", type=Path, default=ROOT / ".cache/arm", help="where qemu, the arm64 root and packages are kept")
    ap.add_argument("--cores", default=",".join(CORES), help=f"named cores to emulate (default {','.join(CORES)})")
    ap.add_argument(
        "--text-backbone",
        default="tiny",
        help="the text encoder: tiny (default: a small BERT built here), or a train --backbone "
        "(e.g. all-minilm-l6-v2: minutes per bundle under emulation)",
    )
    args = ap.parse_args()
    started = time.perf_counter()
    try:
        device = EmulatedDevice(args.cache)
    except OutputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    wheel_built = subprocess.run([sys.executable, str(ROOT / "scripts/build_wheels.py")], cwd=ROOT, capture_output=True, text=True)
    if wheel_built.returncode != 0:
        raise SystemExit(f"make wheels failed:\n{wheel_built.stderr[-2000:]}")
    (wheel,) = sorted((ROOT / "dist").glob("edge_transfer_runtime-*-py3-none-any.whl"))
    try:
        device.build_root()
        requirements = device.install(wheel, ["onnxruntime", "openvino", "text"])
    except Unavailable as e:
        print(f"arm-test SKIPPED: {e}")
        return 0
    print(f"emulated aarch64: Debian CPython 3.11 under qemu-user; {wheel.name} with {', '.join(requirements)} as aarch64 resolves them")
    print(f"installed: {', '.join(device.versions())}")
    with tempfile.TemporaryDirectory(prefix="edge-transfer-arm-") as tmp:
        work = Path(tmp)
        files, texts = make_data(work)
        bundles = export_bundles(work, args.text_backbone)
        reference = {
            b: {"predict": answers(host(*predict_args(b, files, texts), cwd=work)), "val": 100 * json.loads(host(*val_args(b), cwd=work))["accuracy"]}
            for b in bundles
        }
        print(
            f"host: {len(bundles)} bundles, answers for {len(files)} images and {len(texts.read_text().splitlines())} texts "
            f"({time.perf_counter() - started:.0f} s so far)"
        )
        cores = [CORES[c] for c in args.cores.split(",")]
        for core in cores:  # each core's root (its cpuinfo from its HWCAP probe), once, before commands run in parallel
            device.core_root(core)
        jobs = [(core, b, p) for core in cores for b, p in bundles.items()]
        print(HEADER)
        with ThreadPoolExecutor(max_workers=2) as pool:  # the emulated cores are independent processes: 2 at a time
            futures = [pool.submit(on_core, device, core, b, p, reference[REFERENCE.get(b, b)], work, files, texts) for core, b, p in jobs]
            rows = []
            for future in as_completed(futures):
                rows.append(future.result())
                print(format_row(rows[-1]), flush=True)
        perturbed = perturb_fp16(work, "bundles/image/onnx-fp16")
        with ThreadPoolExecutor(max_workers=2) as pool:
            extra = list(pool.map(lambda core: perturbed_fails(device, core, perturbed, work), cores))
        extra.append(newest_openvino_refused(device, cores[0], "bundles/image/openvino-int8", work))
        refusals = [e for e in extra if e]
    print(f"\n{HEADER}")
    for r in sorted(rows, key=lambda r: (r.core, r.bundle)):
        print(format_row(r))
    print("* compared with x86's answers from the fp32 bundle: x86 without VNNI saturates on its full 8-bit weights")
    failed = [r for r in rows if r.problems or r.check != "PASS"]
    for r in failed:
        print(f"FAILED {r.core} {r.bundle}: {r.problems}")
    for problem in refusals:
        print(f"FAILED {problem}")
    checks = f"{len(rows) - len(failed)} of {len(rows)} rows passed, {len(extra) - len(refusals)} of {len(extra)} refusals held"
    print(f"\narm-test: {checks} on {', '.join(c.name for c in cores)} in {time.perf_counter() - started:.0f} s")
    return 1 if failed or refusals else 0


if __name__ == "__main__":
    sys.exit(main())
