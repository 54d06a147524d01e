"""Features from intermediate layers: layer names, the cut network, a probe trained and exported on them, and
`probe-layers` (real EfficientNet-Lite0 weights, digits, ONNX Runtime)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from runtimes.errors import InputError
from tests.conftest import SMALL, run_cli


@pytest.fixture(scope="module")
def lite0():
    from edge_transfer.sources import create_backbone

    bb = create_backbone("efficientnet_lite0", pretrained=True)
    bb.preprocessing = bb.preprocessing.with_size(SMALL)
    return bb


def test_layer_names_indices_and_lists_resolve_in_network_order(lite0):
    from edge_transfer.layers import feature_layers, parse_layers

    assert feature_layers(lite0) == [f"blocks.{i}" for i in range(7)] + ["final"]
    assert parse_layers(None, lite0) == ["final"]
    assert parse_layers("-1", lite0) == ["final"]
    assert parse_layers("-2", lite0) == ["blocks.6"]
    assert parse_layers("final, blocks.4,blocks.2,blocks.2", lite0) == ["blocks.2", "blocks.4", "final"]
    with pytest.raises(InputError, match=r"no layer 'blocks\.9'; layers: blocks\.0, .*final"):
        parse_layers("blocks.9", lite0)
    with pytest.raises(InputError, match=r"-1\) to 'blocks\.0' \(-8\)"):
        parse_layers("-9", lite0)


def test_the_cut_network_is_the_full_network_up_to_the_layer_and_no_more(lite0):
    from skimage import data as skdata

    from edge_transfer.layers import captured, layer_backbone, pool
    from runtimes.preprocess import prepare_image

    x = torch.from_numpy(prepare_image(skdata.chelsea(), lite0.preprocessing))[None].permute(0, 3, 1, 2).float() / 127.5 - 1.0
    with torch.no_grad(), captured(lite0.body, ["blocks.2", "blocks.4"]) as seen:
        final = lite0(x)
        expected = torch.cat([pool(seen["blocks.2"]), pool(seen["blocks.4"])], 1)
    cut = layer_backbone(lite0, ["blocks.2", "blocks.4"])
    assert cut.name == "efficientnet_lite0@blocks.2,blocks.4"
    assert cut.num_features == 40 + 112
    with torch.no_grad():
        torch.testing.assert_close(cut(x), expected)
    full_params = sum(p.numel() for p in lite0.parameters())
    cut_params = sum(p.numel() for p in cut.parameters())
    assert cut_params < 0.25 * full_params  # blocks 5, 6 and the 1280-channel head conv are gone
    assert not any(n.startswith(("conv_head", "bn2")) for n in dict(cut.body.named_modules()))
    tapped = layer_backbone(lite0, ["blocks.4", "final"])  # with final the whole network runs, blocks.4 read on the way
    with torch.no_grad():
        both = tapped(x)
    torch.testing.assert_close(both[:, 112:], final)
    assert not lite0.body._forward_hooks and not lite0.body.get_submodule("blocks.4")._forward_hooks  # hooks never stay


def test_a_model_whose_forward_is_not_a_sequence_is_refused_by_name():
    from edge_transfer.backbones import Backbone
    from edge_transfer.layers import layer_backbone
    from runtimes.preprocess import PreprocessConfig

    class Skip(nn.Module):  # `a` sees the stem's output plus the input: a cut (stem, a) would compute something else
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.a = nn.Conv2d(3, 3, 3, padding=1), nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(self.stem(x) + x).mean((2, 3))

    class Tokens(nn.Module):  # a ViT-like reshape between modules: the plain sequence does not even run
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.a = nn.Conv2d(3, 8, 4, stride=4), nn.Linear(8, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.a(self.stem(x).flatten(2).transpose(1, 2)).mean(1)

    pre = PreprocessConfig(input_size=(16, 16))
    assert layer_backbone(Backbone("skip", Skip(), 4, pre).eval(), ["stem"]).num_features == 3  # up to stem: a sequence
    for name, body in (("skip", Skip()), ("tokens", Tokens())):
        with pytest.raises(InputError, match=rf"--features a: {name} cannot be cut there .* or add 'final'"):
            layer_backbone(Backbone(name, body, 4, pre).eval(), ["a"])
    assert layer_backbone(Backbone("tokens", Tokens(), 8, pre).eval(), ["a", "final"]).num_features == 16


def test_a_probe_on_an_intermediate_layer_exports_a_smaller_validated_bundle(tmp_path, digits_bundle):
    import edge_transfer as et
    import runtimes

    run = et.train("digits", out=tmp_path / "lp-b3", image_size=SMALL, interpolation="bilinear", features="blocks.3", progress=False)
    config = json.loads((run.path / "config.json").read_text())
    assert config["features"] == ["blocks.3"] and config["head"]["in_features"] == 80
    assert config["source"]["backbone"] == "efficientnet_lite0@blocks.3"
    assert run.metrics["test_accuracy"] > 0.85
    [result] = et.export(run.path, out=tmp_path / "b3")
    assert result.path.joinpath("model.onnx").stat().st_size < 0.2 * digits_bundle.joinpath("model.onnx").stat().st_size
    with runtimes.load(result.path) as predictor:
        assert predictor.describe()["validation_passed"]
        assert predictor.self_test().status == "pass"
    with pytest.raises(InputError, match="needs --strategy linear-probe, not 'finetune'"):
        et.train("digits", out=tmp_path / "ft", strategy="finetune", features="blocks.3")
    assert not (tmp_path / "ft").exists()


def test_probe_layers_cli_reports_every_layer_asked_and_recommends_one(tmp_path):
    from tests.conftest import write_image_folder

    folder = write_image_folder(tmp_path / "digits", per_class=20)
    proc = run_cli("probe-layers", "--data", str(folder), "--image-size", "32", "--json", "--layers=-2,blocks.1,blocks.3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    doc = json.loads(proc.stdout)
    rows = {r["layer"]: r for r in doc["layers"]}
    assert list(rows) == ["blocks.1", "blocks.3", "blocks.6"]  # network order
    assert [rows[n]["dim"] for n in rows] == [24, 80, 320]
    assert all(0.0 <= r["val_accuracy"] <= 1.0 and r["ms"] > 0 for r in rows.values())
    assert rows["blocks.1"]["onnx_mb"] < rows["blocks.3"]["onnx_mb"] < rows["blocks.6"]["onnx_mb"]  # each graph is cut
    assert rows["blocks.1"]["parameters"] < rows["blocks.3"]["parameters"] < rows["blocks.6"]["parameters"]
    from edge_transfer.layer_probe import tie_window

    best = max(r["val_accuracy"] for r in rows.values())
    assert rows[doc["recommended"]]["val_accuracy"] >= best - tie_window(best, doc["split"]["val"])
    assert doc["recommended"] in doc["tied"] and all(rows[n]["val_accuracy"] >= best - tie_window(best, doc["split"]["val"]) for n in doc["tied"])
    assert doc["images"] == 60 and sum(doc["split"].values()) == 60


def test_layers_tied_within_what_the_val_set_can_tell_are_said_to_be():
    """Before: with 7 of 8 layers at 100% on 48 val images, the 24-d blocks.1 was recommended as if it had won.
    The tie window is the Wilson interval's reach (7.4 pt at 100% of 48; 1 pt, the floor, on thousands of images),
    and the recommendation line names the tied layers and says speed decided."""
    from edge_transfer.cli_layers import recommendation_line
    from edge_transfer.layer_probe import LayerResult, recommend, tie_window

    assert tie_window(1.0, 48) == pytest.approx(0.074, abs=0.001) and tie_window(0.95, 100_000) == 0.01
    rows = [
        LayerResult(f"blocks.{i}", 24 * (i + 1), acc, acc, 1e-3, ms, 1.0, 1000) for i, (acc, ms) in enumerate([(1.0, 1.0), (1.0, 3.0), (0.9, 0.5)])
    ]
    best, tied = recommend(rows, 48)
    assert best.layer == "blocks.0" and [r.layer for r in tied] == ["blocks.0", "blocks.1"]
    line = recommendation_line(rows, best, tied, 48)
    assert "2 of 3 layers (blocks.0, blocks.1) are tied within what 48 val images can tell, so speed decided" in line
