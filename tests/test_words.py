"""Words users read say what is true of the bundle in front of them: an embedding's self-test speaks of embeddings,
inspect counts float layers as export --help does, every predict flag is explained, and a manifest that travels to
devices names its data without the host's paths."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_an_embedding_self_test_speaks_of_embeddings(embedding_bundles: dict[str, Path]):
    r = run_cli("check", str(embedding_bundles["onnx"]))
    line = next(x for x in r.stdout.splitlines() if x.startswith("self-test on"))
    assert r.returncode == 0 and "relative embedding error" in line and "logit" not in line, r.stdout


def test_inspect_counts_float_layers_as_export_help_does(format_bundles: dict[str, Path]):
    r = run_cli("inspect", str(format_bundles["openvino-int8"]))
    line = next(x for x in r.stdout.splitlines() if x.startswith("in float"))
    conversion = json.loads((format_bundles["openvino-int8"] / "manifest.json").read_text())["model"]["conversion"]
    first = conversion["float_first_layers"]
    assert f"the first {first} weight layer(s) (--float-first-layers)" in line, line
    assert first == 3 and "Gemm" in line  # the head, kept in float besides the first three


def test_every_predict_flag_is_explained():
    r = run_cli("predict", "--help")
    assert r.returncode == 0 and "how many classes to list per input" in r.stdout


def test_manifests_name_their_data_without_host_paths(digits_run, tmp_path: Path):
    import edge_transfer as et

    from conftest import write_image_folder

    data = write_image_folder(tmp_path / "deep" / "in" / "held-out", per_class=3, classes=tuple("0123456789"))
    (result,) = et.export(digits_run.path, out=tmp_path / "b", data=str(data) + "/")
    doc = json.loads((result.path / "manifest.json").read_text())
    assert doc["validation"]["data"]["source"] == "held-out/", doc["validation"]["data"]  # not tmp_path/deep/in/held-out/
    assert str(tmp_path) not in (result.path / "manifest.json").read_text().replace(str(digits_run.path), "")


def test_a_number_that_is_not_gated_says_so():
    """An embedding bundle's 1-NN accuracy drop is information, not a gate: never printed beside PASS as if it were."""
    from converters.validate import format_table, format_validation

    v = {
        "kind": "embedding",
        "passed": True,
        "split": "test",
        "count": 96,
        "unit": "texts",
        "mean_cosine": 0.9991,
        "min_cosine": 0.99,
        "neighbour_agreement": 0.97,
        "neighbours": 5,
        "embedding_gate": {"mean_cosine": 0.995, "neighbour_agreement": 0.9},
        "artifact_accuracy": 0.80,
        "torch_accuracy": 0.825,
        "accuracy_drop": 0.025,
    }
    assert "drop +2.50 pt, for information: not gated" in format_validation(v)
    row = format_table([{"format": "onnx-int8", "validation": v, "bytes": 1, "written": True}]).splitlines()[2]
    assert "+2.50 pt (not gated)" in row and row.rstrip().endswith("PASS")
