"""Transfer strategies, checkpoints, feature cache, ONNX export and the validation gate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import edge_transfer as et
import runtimes
from edge_transfer.data import load_digits_dataset
from edge_transfer.sources import load_run
from runtimes.errors import InputError, OutputError, ValidationFailed

from conftest import run_cli


def _subset(n_per_class: int = 12):
    ds = load_digits_dataset()
    keep = np.concatenate([np.flatnonzero(ds.targets == c)[:n_per_class] for c in range(3)])
    sub = ds.subset(keep)
    sub.classes = sub.classes[:3]
    return sub


def test_linear_probe_reaches_good_accuracy_and_run_round_trips(digits_run):
    assert digits_run.metrics["test_accuracy"] >= 0.85  # 64 px on 2 cores; the demo's 128 px reaches >= 0.94
    cfg = json.loads((digits_run.path / "config.json").read_text())
    assert cfg["strategy"] == "linear-probe" and cfg["head"]["type"] == "linear"
    # the L2 strength the sweep chose is saved (the config's weight_decay stays null: "choose on val")
    from edge_transfer.probe import PROBE_L2_GRID

    assert cfg["training"]["chosen_weight_decay"] in PROBE_L2_GRID and cfg["training"]["lbfgs_max_iter"] >= 1
    assert set(digits_run.metrics) == {"train_accuracy", "val_accuracy", "test_accuracy", "test_count"}
    assert not list(digits_run.path.glob("*.pt*")), "checkpoints are safetensors, never pickle"
    model, _ = load_run(digits_run.path)
    x = torch.zeros(1, 64, 64, 3, dtype=torch.uint8)
    assert model(x).shape == (1, 10)


def test_feature_cache_is_reused(digits_run, tmp_path: Path):
    again = et.train("digits", out=tmp_path / "again", image_size=64, interpolation="bilinear", progress=False)
    assert again.config["training"]["feature_cache"]["cache_hit"] is True
    assert again.metrics == digits_run.metrics


def test_features_do_not_depend_on_the_training_precision(digits_run, tmp_path: Path):
    """The head learns from the features the device computes: plain fp32, even when training runs in bf16 (the
    digits run's cached fp32 features are reused, and the probe is the same)."""
    bf16 = et.train("digits", out=tmp_path / "bf16", image_size=64, interpolation="bilinear", mixed_precision="bf16", device="cpu", progress=False)
    assert bf16.config["training"]["mixed_precision"] == "bf16"
    assert bf16.config["training"]["feature_cache"]["cache_hit"] is True and bf16.metrics == digits_run.metrics


def test_mixed_precision_finetune_reports_what_the_fp32_model_scores(tmp_path: Path):
    """Trained under bf16 autocast, scored in plain fp32: each epoch's validation loss, the metrics and the returned
    model are the fp32 model's (the exported bundle's), not the bf16 forward's (about 1e-3 away here)."""
    from converters.torch_reference import reference_logits
    from edge_transfer.data import stratified_split

    data = _subset()
    kw = dict(strategy="finetune", image_size=32, epochs=1, batch_size=8, mixed_precision="bf16", device="cpu", progress=False)
    run = et.train(data, out=tmp_path / "ft", **kw)
    assert run.config["training"]["mixed_precision"] == "bf16"
    val = stratified_split(data.targets, seed=0, classes=data.classes).val
    model, _ = load_run(run.path)
    logits = reference_logits(model, data.prepared_batch(val, model.preprocessing))
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(logits), torch.from_numpy(data.targets[val]).long()))
    assert abs(run.history[-1]["val_loss"] - loss) < 1e-4
    assert run.metrics["val_accuracy"] == run.history[-1]["val_accuracy"] == float((logits.argmax(1) == data.targets[val]).mean())


@pytest.mark.parametrize("strategy", ["finetune", "partial"])
def test_finetune_and_partial_train_the_right_parameters(strategy: str, tmp_path: Path):
    run = et.train(_subset(), out=tmp_path / strategy, strategy=strategy, image_size=32, epochs=2, batch_size=8, unfreeze_blocks=1, progress=False)
    assert len(run.history) >= 1 and "val_accuracy" in run.history[0]
    details = run.config["training"]
    base = et.create_backbone("efficientnet_lite0")
    model, _ = load_run(run.path)
    stem_changed = not torch.equal(model.backbone.body.conv_stem.weight, base.body.conv_stem.weight)
    last_changed = not torch.equal(model.backbone.body.conv_head.weight, base.body.conv_head.weight)
    assert last_changed
    assert stem_changed == (strategy == "finetune")
    if strategy == "partial":
        assert details["trainable_blocks"] == 1


def test_run_directory_is_not_overwritten_silently(digits_run):
    with pytest.raises(OutputError, match="already exists"):
        et.train("digits", out=digits_run.path, progress=False)


def test_an_interrupted_multi_format_export_is_completed_with_skip_existing(digits_run, tmp_path: Path):
    """A Ctrl-C after one of two formats leaves that bundle complete (bundles are renamed into place) and the other
    missing: a plain re-run is refused naming --skip-existing, which keeps the first (checked) and exports the
    other. With --quiet, an int8 export prints no third-party noise (NNCF's progress bars and INFO lines, torch's
    CUDA warning)."""
    out = tmp_path / "b"
    # the gate is not what this tests: int8 on another CPU may fail it, and is written anyway
    args = ["export", str(digits_run.path), "--out", str(out), "--format", "onnx,openvino-int8", "--calibration-size", "32", "--quiet"]
    args += ["--allow-failed-validation", "--no-fallback"]
    first = run_cli(*args)
    assert first.returncode == 0, first.stderr
    for noise in ("Statistics collection", "Bias correction", "nncf", "INFO", "UserWarning", "CUDA"):
        assert noise not in first.stderr, first.stderr
    shutil.rmtree(out / "onnx")  # as if interrupted before it was renamed into place
    again = run_cli(*args)
    assert again.returncode == 2 and "--skip-existing" in again.stderr and "Traceback" not in again.stderr
    before = (out / "openvino-int8" / "manifest.json").read_bytes()
    done = run_cli(*args, "--skip-existing")
    assert done.returncode == 0, done.stderr
    assert f"kept {out / 'openvino-int8'}" in done.stdout and f"wrote {out / 'onnx'}" in done.stdout
    assert (out / "openvino-int8" / "manifest.json").read_bytes() == before and (out / "onnx" / "manifest.json").exists()
    (out / "onnx" / "model.onnx").write_bytes(b"half-written")  # a damaged one is not kept silently
    bad = run_cli(*args, "--skip-existing")
    assert bad.returncode == 2 and "not a complete bundle" in bad.stderr


def test_export_records_validation_and_matches_torch(digits_run, digits_bundle: Path):
    m = runtimes.read_manifest(digits_bundle)
    v = m.validation
    assert v["split"] == "test" and v["count"] == digits_run.metrics["test_count"]
    assert v["top1_agreement"] >= 0.995 and v["max_abs_logit_diff"] < 1e-3
    assert v["torch_accuracy"] == pytest.approx(digits_run.metrics["test_accuracy"])
    assert m.source["strategy"] == "linear-probe" and m.producer["opset"] == 18
    import onnx

    proto = onnx.load(str(digits_bundle / "model.onnx"))
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim][0] == "batch"


class _DiffersInExport(torch.nn.Module):
    """A deliberately broken export: the graph computes something else than eager torch."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        y = self.inner(x)
        return -y if torch.onnx.is_in_onnx_export() else y


def test_validation_gate_blocks_a_bad_export(digits_run, tmp_path: Path):
    from converters.export import export_bundle
    from converters.validate import ReferenceData

    model, cfg = load_run(digits_run.path)
    ds = load_digits_dataset()
    images = ds.prepared_batch(range(40), model.preprocessing)
    ref = ReferenceData(images, ds.targets[:40], "test")
    bad = _DiffersInExport(model)
    with pytest.raises(ValidationFailed, match="agreement"):
        export_bundle(bad, tmp_path / "b", preprocessing=model.preprocessing, kind=model.labels, reference=ref)
    assert not (tmp_path / "b").exists() and list(tmp_path.iterdir()) == []
    res = export_bundle(bad, tmp_path / "b", preprocessing=model.preprocessing, kind=model.labels, reference=ref, allow_failed_validation=True)
    assert res.validation["passed"] is False and res.validation["overridden"] is True
    assert runtimes.read_manifest(tmp_path / "b").validation["passed"] is False


def test_the_bundle_kind_is_an_object_the_export_asks(digits_run, tmp_path: Path):
    """A list of labels stands for a classifier; anything else, and a kind that does not fit the graph, is refused by
    name before a file is written (converters.bundle_kind)."""
    from converters.bundle_kind import Classifier, Embedding
    from converters.export import export_bundle
    from converters.validate import ReferenceData

    model, cfg = load_run(digits_run.path)
    ds = load_digits_dataset()
    ref = ReferenceData(ds.prepared_batch(range(8), model.preprocessing), ds.targets[:8], "test")
    kw = {"preprocessing": model.preprocessing, "reference": ref, "self_test_size": 0}
    with pytest.raises(InputError, match="kind must be .*BundleKind or a list of labels, got str"):
        export_bundle(model, tmp_path / "b", kind="digits", **kw)
    with pytest.raises(InputError, match=f"model outputs {len(model.labels)} values per input but 3 labels were given"):
        export_bundle(model, tmp_path / "b", kind=Classifier(("a", "b", "c")), **kw)
    with pytest.raises(InputError, match="the embedding has 7 dimensions"):
        export_bundle(model, tmp_path / "b", kind=Embedding({"dim": 7, "normalization": "l2"}), **kw)
    with pytest.raises(InputError, match="needs its labels"):
        Classifier(())
    assert list(tmp_path.iterdir()) == []


def test_the_gate_judges_paired_predictions_and_says_when_a_set_is_too_small():
    """With 36 held-out images one image is 2.78 pt: a 1-point gate cannot tell such a drop from noise, so one net
    image lost passes (the exact test gives p = 0.5) and two fail; on 359 images the point drop decides, as before.
    The exact test's p-value and the drop this set could resolve are reported either way."""
    from converters.validate import format_validation, paired_judgement, smallest_significant_loss, worse_p_value

    assert worse_p_value(5, 0) == 0.03125 and worse_p_value(1, 0) == 0.5 and worse_p_value(0, 0) == 1.0
    assert smallest_significant_loss() == 5 and worse_p_value(4, 0) > 0.05

    def judge(n: int, losses: int, gains: int = 0) -> dict:
        torch_hits = np.ones(n, bool)
        torch_hits[:gains] = False  # torch wrong where the artifact is right
        artifact_hits = torch_hits.copy()
        artifact_hits[:gains] = True
        artifact_hits[gains : gains + losses] = False
        return paired_judgement(torch_hits, artifact_hits, 0.01)

    small = judge(36, 1)
    assert small["passed"] and small["too_small_to_judge"] and small["p_worse"] == 0.5 and small["one_image"] == pytest.approx(1 / 36, abs=1e-6)
    assert small["resolvable_drop"] == pytest.approx(5 / 36, abs=1e-6)
    assert not judge(36, 2)["passed"] and judge(36, 3, gains=2)["passed"]
    assert judge(359, 3)["passed"] and not judge(359, 3)["too_small_to_judge"] and not judge(359, 4)["passed"]
    assert judge(359, 5, gains=1)["losses"] == 5 and not judge(359, 5, gains=1)["passed"]
    v = {
        "split": "all",
        "count": 36,
        "torch_accuracy": 1.0,
        "artifact_accuracy": 34 / 36,
        "accuracy_drop": 2 / 36,
        "paired": judge(36, 2),
        "top1_agreement": 34 / 36,
        "max_abs_logit_diff": 1.0,
        "max_drop": 0.01,
        "min_agreement": None,
        "passed": False,
    }
    text = format_validation(v)
    assert "2 image(s) lost and 0 gained" in text and "too few images to judge" in text and "13.9 pt" in text and text.endswith("FAIL")


def test_a_small_held_out_set_is_judged_and_flagged(digits_run, tmp_path: Path):
    """Through a real export: 36 images, no image changes its answer in fp32 ONNX, and the manifest says the set was
    too small to judge a 1-point drop."""
    from converters.export import export_bundle
    from converters.validate import ReferenceData

    model, _ = load_run(digits_run.path)
    ds = load_digits_dataset()
    ref = ReferenceData(ds.prepared_batch(range(36), model.preprocessing), ds.targets[:36], "test")
    res = export_bundle(model.for_export(), tmp_path / "b", preprocessing=model.preprocessing, kind=model.labels, reference=ref)
    paired = runtimes.read_manifest(res.path).validation["paired"]
    assert paired["too_small_to_judge"] is True and paired["losses"] == paired["gains"] == 0 and res.validation["passed"]


class _FixedOutputs:
    """The Predictor surface `compare` uses, returning given logits: the gate's arithmetic on known numbers."""

    inference_precision = "f32"

    def __init__(self, logits: np.ndarray):
        self.logits = logits

    def run_chunked(self, images: np.ndarray) -> np.ndarray:
        return self.logits

    def describe(self) -> dict:
        return {"backend": "fixed"}


def test_int8_without_labels_is_judged_where_torch_is_confident():
    """No labels (a pretrained model on the user's photos): flipping the images where torch is unsure passes; losing
    a confident answer, torch's top-1 leaving the top 5, or logits pointing elsewhere fails, each check by name.
    On 20 images one image may miss (it is 5%, more than the 3% allowed); with fewer than 10 confident images the
    confident check says it cannot judge and is skipped."""
    from converters.validate import MIN_CONFIDENT_IMAGES, UNLABELLED_INT8_GATE, ReferenceData, compare

    rng = np.random.default_rng(0)
    n, classes = 40, 10
    noise = rng.normal(0, 1, (n, classes)).astype(np.float32)

    def logits_with(confident: int) -> np.ndarray:  # the first `confident` rows confident, the rest unsure
        out = noise.copy()
        for i in range(n):
            top = noise[i].max() + (8.0 if i < confident else 0.2)
            out[i, i % classes] = top
            if i >= confident:  # two runners-up just below: softmax top-1 under 0.4
                out[i, (i + 1) % classes], out[i, (i + 2) % classes] = top - 0.1, top - 0.2
        return out

    torch_logits = logits_with(20)
    data = ReferenceData(np.zeros((n, 4, 4, 3), np.uint8), None, "photos")

    def judge(logits: np.ndarray) -> dict:
        return compare(_FixedOutputs(logits), torch_logits, data, min_agreement=None, max_drop=0.01, unlabelled_gate=UNLABELLED_INT8_GATE)

    unsure_flipped = torch_logits.copy()
    for i in range(20, 40):  # swap top-1 and runner-up where torch is unsure
        a, b = np.argsort(-unsure_flipped[i])[:2]
        unsure_flipped[i, [a, b]] = unsure_flipped[i, [b, a]]
    v = judge(unsure_flipped)
    assert v["top1_agreement"] <= 0.5 and v["unlabelled"]["confident_count"] == 20 and v["passed"], v["checks"]
    confident_lost = unsure_flipped.copy()
    confident_lost[:2] = np.roll(confident_lost[:2], 1, axis=1)  # two of 20 confident answers lost (one is allowed)
    assert judge(confident_lost)["checks"]["confident_agreement"] is False
    far = torch_logits.copy()
    far[:, :] = far[:, ::-1]  # every answer moved to another class, far outside the top 5 for most images
    assert {k for k, ok in judge(far)["checks"].items() if not ok} == set(UNLABELLED_INT8_GATE)
    small = ReferenceData(np.zeros((20, 4, 4, 3), np.uint8), None, "photos")  # one image is 5%, more than the 3% allowed
    one_lost = torch_logits[:20].copy()
    one_lost[0, 0] = one_lost[0].min() - 1.0  # torch's confident top-1 for image 0 now ranks last
    v = compare(_FixedOutputs(one_lost), torch_logits[:20], small, min_agreement=None, max_drop=0.01, unlabelled_gate=UNLABELLED_INT8_GATE)
    assert v["unlabelled"]["top5_containment"] == 0.95 and v["unlabelled"]["confident_agreement"] == 0.95
    assert v["checks"]["top5_containment"] and v["checks"]["confident_agreement"]
    few = logits_with(MIN_CONFIDENT_IMAGES - 1)
    v = compare(_FixedOutputs(few), few, data, min_agreement=None, max_drop=0.01, unlabelled_gate=UNLABELLED_INT8_GATE)
    assert "confident_agreement" not in v["checks"] and "too few" in v["unlabelled"]["confident_note"] and v["passed"]
