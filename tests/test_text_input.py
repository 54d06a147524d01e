"""What a text bundle answers is what was given: one answer per line of a text file whatever characters a line
holds, empty and invalid texts refused with one line, a size cap, tables read as written (TSV without quoting,
repeated column names and ragged rows named), and a token limit the encoder can actually read. Real tokenizers,
real ONNX Runtime sessions, the real CLI."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from test_user_files import one_error

import runtimes
from runtimes.errors import DatasetError, InputError
from runtimes.text_data import load_text_folder, load_text_table

from conftest import run_cli, write_text_folder


def test_each_line_of_a_text_file_is_one_answer(text_bundles: dict[str, Path], tmp_path: Path):
    lines = ["first line with a\u2028line separator", "second with a NEL\u0085inside", "third with a form\x0cfeed", "fourth, CRLF ended"]
    f = tmp_path / "texts.txt"
    f.write_bytes(("\ufeff" + "\n".join(lines[:3]) + "\n" + lines[3] + "\r\n").encode("utf-8"))
    r = run_cli("predict", str(text_bundles["onnx"]), "--text-file", str(f), "--jsonl")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{") and '"text"' in line]
    assert [rec["text"] for rec in records] == lines  # the BOM dropped, nothing split inside a line


@pytest.mark.parametrize("command", ["predict", "enroll", "identify"])
@pytest.mark.parametrize("text", ["", "   "])
def test_an_empty_text_is_refused(text_bundles: dict[str, Path], tmp_path: Path, command: str, text: str):
    gallery = tmp_path / "g.npz"
    extra = {"predict": [], "enroll": ["--gallery", str(gallery), "--label", "x"], "identify": ["--gallery", str(gallery)]}[command]
    bundle = text_bundles["onnx" if command == "predict" else "embedding"]
    if command == "identify":
        assert run_cli("enroll", str(bundle), "--gallery", str(gallery), "--label", "x", "--text", "some words").returncode == 0
    before = gallery.read_bytes() if gallery.exists() else None
    one_error(run_cli(command, str(bundle), *extra, "--text", text), "empty")
    assert (gallery.read_bytes() if gallery.exists() else None) == before


def test_invalid_unicode_and_huge_texts_are_one_input_error(text_bundles: dict[str, Path]):
    with runtimes.load(text_bundles["onnx"]) as p:
        with pytest.raises(InputError, match="not valid Unicode"):
            p.predict(["fine", "\udcff"])
        with pytest.raises(InputError, match="at most 1048576 bytes"):
            p.predict("x " * (5 << 20))
        with pytest.raises(InputError, match="empty"):
            p.embed([" "]) if p.is_embedding else p.predict([" "])
    one_error(run_cli("predict", str(text_bundles["onnx"]), "--text", "caf\udce9"), "not valid Unicode")


def test_tables_are_read_as_written(tmp_path: Path):
    tsv = tmp_path / "t.tsv"
    rows = [f"text number {i}\t{'ab'[i % 2]}" for i in range(20)]
    rows[8] = '"a quote opens this text\ta'
    tsv.write_text("\n".join(rows) + "\n")
    data = load_text_table(tsv, text_column=0, label_column=1)
    assert len(data) == 20 and data.texts[8] == '"a quote opens this text'  # no rows merged
    dup = tmp_path / "d.csv"
    dup.write_text("text,label,text\nhello,a,other\nworld,b,more\n")
    with pytest.raises(DatasetError, match="'text' more than once"):
        load_text_table(dup)
    ragged = tmp_path / "r.csv"
    ragged.write_text("text,label\nhello,a\nworld,b,extra\nthird,b\n")
    with pytest.raises(DatasetError, match=r"r.csv:3: 3 fields where the header has 2"):
        load_text_table(ragged)
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n["a", "y"]\n')
    with pytest.raises(DatasetError, match=r"j.jsonl:2: a JSON list, not an object"):
        load_text_table(jsonl)
    sep = tmp_path / "s.jsonl"
    sep.write_text('{"text": "one\u2028two", "label": "x"}\n{"text": "three", "label": "y"}\n')
    assert load_text_table(sep).texts == ["one\u2028two", "three"]


def test_symlinked_texts_are_counted_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    root = write_text_folder(tmp_path / "topics", per_class=4)
    (root / "sport" / "linked.txt").symlink_to(root / "sport" / "000.txt")
    with caplog.at_level(logging.WARNING, logger="runtimes.text_data"):
        data = load_text_folder(root)
    assert data.info["symlinks_left_out"] == 1 and "left out 1 symlink(s)" in caplog.text


def test_a_token_limit_beyond_the_encoder_is_refused_at_train(text_encoder_dir: Path, tmp_path: Path):
    data = write_text_folder(tmp_path / "topics", per_class=6)
    r = run_cli("train", "--data", str(data), "--backbone", str(text_encoder_dir), "--out", str(tmp_path / "run"), "--max-tokens", "1000")
    one_error(r, "max_tokens 1000 is more than the encoder's 512 positions")
    assert not (tmp_path / "run").exists()


def test_a_bundle_whose_token_limit_the_model_cannot_read_fails_its_check(text_bundles: dict[str, Path], tmp_path: Path):
    """A bundle made before train and export refused such limits: its self-test runs one text of the full limit."""
    import shutil

    from conftest import rehash_bundle

    bundle = tmp_path / "b"
    shutil.copytree(text_bundles["onnx"], bundle)
    doc = json.loads((bundle / "manifest.json").read_text())
    doc["text"]["max_tokens"] = 1000  # the tiny encoder has 512 positions
    (bundle / "manifest.json").write_text(json.dumps(doc, indent=2))
    rehash_bundle(bundle)
    r = run_cli("check", str(bundle))
    assert r.returncode == 1 and "a text of 1000 tokens (the bundle's limit) fails on this device" in r.stderr, r.stdout + r.stderr
    assert run_cli("check", str(text_bundles["onnx"])).returncode == 0
