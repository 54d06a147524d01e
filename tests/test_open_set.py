"""Answering "none of these" on images the models never saw (tests/photo_crops.py): one class per skimage photo,
training and enrolment crops from the left half of each known photo, queries from the right half, and photos never
taught. A classifier with the floor calibrated at export and a gallery with the threshold it derives at enrolment,
both through the real CLI with torch blocked: known queries kept and right >= 90%, never-taught ones answered
unknown >= 80% (benchmarks/open_set.py measures more splits)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from photo_crops import split_photos, write_photo_crops

import runtimes
from runtimes.open_set import calibrate_min_score

from conftest import run_cli

IMAGE_SIZE = 160  # photo crops at 64 px lose what tells them apart


@pytest.fixture(scope="module")
def photo_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import edge_transfer as et

    root = tmp_path_factory.mktemp("open-set")
    known, never = split_photos(0)
    crops = write_photo_crops(root / "crops", known, never, seed=0)
    run = et.train(str(crops / "train"), out=root / "run", strategy="linear-probe", image_size=IMAGE_SIZE, progress=False)
    return {
        "crops": crops,
        "classifier": et.export(run.path, out=root / "classifier")[0].path,
        "embedding": et.export(run.path, out=root / "embedding", output="embedding")[0].path,
    }


def _digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(folder)).encode() + p.read_bytes())
    return h.hexdigest()


@pytest.mark.slow
def test_a_classifier_with_its_calibrated_floor_keeps_known_queries_and_turns_strangers_away(photo_bundles):
    bundle, crops = str(photo_bundles["classifier"]), photo_bundles["crops"]
    before = _digest(crops)
    floor = runtimes.read_manifest(bundle).open_set["min_score"]
    assert 0.0 < floor < 1.0
    assert f"unknown below a top-1 score of {100 * floor:.2f}%" in run_cli("inspect", bundle).stdout
    r = run_cli("val", bundle, "--data", str(crops / "query"), "--min-score", "calibrated", "--json", block_torch=True)
    assert r.returncode == 0, r.stderr
    o = json.loads(r.stdout)["open_set"]
    assert o["known"] == 12 * 15 and o["unknown"] == 8 * 15 and o["min_score"] == floor
    assert o["kept_and_right"] >= 0.9 and o["unknown_rejected"] >= 0.8, o
    plain = json.loads(run_cli("val", bundle, "--data", str(crops / "query"), "--json").stdout)["open_set"]
    assert plain["min_score"] is None and plain["coverage"] == 1.0 and plain["unknown_rejected"] == 0.0  # no floor: every image answered
    text = run_cli("val", bundle, "--data", str(crops / "query"), "--min-score", "calibrated").stdout
    assert f"at a minimum score of {100 * floor:.2f}%: answered" in text and "of the 120 unknown/ images answered unknown" in text
    stranger = next((crops / "query" / "unknown").iterdir())
    r = run_cli("predict", bundle, str(stranger), "--min-score", "calibrated", "--jsonl", block_torch=True)
    record = json.loads(r.stdout)
    assert record["answer"] == ("unknown" if record["top_k"][0]["score"] < floor else record["top_k"][0]["label"])
    assert _digest(crops) == before  # the user's images are read, never touched


@pytest.mark.slow
def test_a_gallery_derives_its_threshold_at_enrolment_and_it_holds_for_queries_unlike_the_enrolment(photo_bundles, tmp_path):
    bundle, crops = str(photo_bundles["embedding"]), photo_bundles["crops"]
    gallery = tmp_path / "g.npz"
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--from-folders", str(crops / "enrol"), block_torch=True)
    assert r.returncode == 0, r.stderr
    assert "derived from this gallery: leave-one-out over 60 image(s) of 12 labels" in r.stdout
    assert "expected: " in r.stdout and "kept and right" in r.stdout and "answered unknown (leave-one-out estimates)" in r.stdout
    listed = json.loads(run_cli("enroll", bundle, "--gallery", str(gallery), "--list", "--json").stdout)
    threshold = listed["threshold"]
    assert listed["threshold_calibration"]["unknown_threshold"] == threshold
    r = run_cli("identify", bundle, "--gallery", str(gallery), str(crops / "query"), "--recursive", "--json", block_torch=True)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["identifications"]
    assert json.loads(r.stdout)["threshold"] == threshold
    known = [x for x in found if Path(x["image"]).parent.name != "unknown"]
    never = [x for x in found if Path(x["image"]).parent.name == "unknown"]
    assert len(known) == 180 and len(never) == 120
    assert np.mean([x["label"] == Path(x["image"]).parent.name for x in known]) >= 0.9
    assert np.mean([not x["known"] for x in never]) >= 0.8
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--remove", "text")  # re-derived without it
    assert json.loads(run_cli("enroll", bundle, "--gallery", str(gallery), "--list", "--json").stdout)["threshold_calibration"]["labels"] == 11
    r = run_cli("identify", bundle, "--gallery", str(gallery), str(crops / "query" / "unknown"), "--min-score", "1", "--json")
    assert all(not x["known"] for x in json.loads(r.stdout)["identifications"])  # an explicit --min-score overrides it


def test_the_floor_is_calibrated_from_held_out_logits_and_needs_three_classes():
    rng = np.random.default_rng(0)
    targets = np.repeat(np.arange(4), 30)
    logits = rng.normal(0, 1, (120, 4))
    logits[np.arange(120), targets] += 4.0  # a confident, mostly right classifier
    cal = calibrate_min_score(logits, targets)
    assert cal is not None and 0.25 < cal["min_score"] < 1.0
    assert cal["known_kept"] > 0.7 and cal["stand_ins_rejected"] > 0.9 and cal["classes"] == 4 and cal["images"] == 120
    assert calibrate_min_score(logits[:60, :2], targets[:60] % 2) is None  # two classes: a stand-in always scores 100%
