"""TensorRT optimisation profiles: the batch range every engine is built for, and a text bundle's token range.
Pure logic (no TensorRT); `runtimes.modality.InputReader.engine_shapes` turns them into each input's shapes."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..errors import InputError

DEFAULT_MAX_BATCH = 16


@dataclass(frozen=True)
class BatchProfile:
    """The optimisation profile's batch range: shapes from `min` to `max` run, `opt` is tuned for."""

    min: int
    opt: int
    max: int

    def contains(self, batch: int) -> bool:
        return self.min <= batch <= self.max

    @property
    def static(self) -> bool:
        return self.min == self.opt == self.max

    def shapes(self, height: int, width: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """(min, opt, max) input shapes for an NHWC uint8 image input."""
        return tuple((b, height, width, 3) for b in (self.min, self.opt, self.max))  # type: ignore[return-value]

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class TokenProfile:
    """A text bundle's sequence-length range (tokens per text, padding included): shapes from `min` to `max` run,
    `opt` is tuned for. `max` is the bundle's token limit, so every text its tokenizer makes fits."""

    min: int
    opt: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.opt <= self.max:
            raise InputError(f"the token profile needs 1 <= min <= opt <= max, got min {self.min}, opt {self.opt}, max {self.max}")

    def contains(self, tokens: int) -> bool:
        return self.min <= tokens <= self.max

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


DEFAULT_OPT_TOKENS = 64  # short texts (messages, intents, queries); --trt-opt-tokens tunes for another length


def derive_token_profile(max_tokens: int, opt_tokens: int | None = None) -> TokenProfile:
    """Tokens 1..`max_tokens`, tuned for `opt_tokens` (default the shorter of 64 and the limit)."""
    opt = min(DEFAULT_OPT_TOKENS, max_tokens) if opt_tokens is None else opt_tokens
    if not 1 <= opt <= max_tokens:
        raise InputError(f"--trt-opt-tokens must be within 1..{max_tokens} (the bundle's token limit), got {opt}")
    return TokenProfile(1, opt, max_tokens)


def derive_profile(
    batch_dim: int | str | None, *, min_batch: int | None = None, opt_batch: int | None = None, max_batch: int | None = None, static: bool = False
) -> BatchProfile:
    """The batch range for a bundle's input: its fixed batch, or the requested range within a dynamic batch.

    A dynamic batch defaults to min 1, opt 1 (edge applications mostly run one frame at a time), max 16.
    `static` (DLA engines, which need min = opt = max) makes the default one batch size: the opt or max given, else 1.
    """
    if isinstance(batch_dim, int):
        for name, value in (("min", min_batch), ("opt", opt_batch), ("max", max_batch)):
            if value is not None and value != batch_dim:
                raise InputError(f"this bundle has a fixed batch of {batch_dim}; a {name} batch of {value} cannot be built")
        return BatchProfile(batch_dim, batch_dim, batch_dim)
    if static:
        given = {v for v in (min_batch, opt_batch, max_batch) if v is not None}
        if len(given) > 1:
            raise InputError(
                f"a DLA engine needs one batch size (min = opt = max), got {sorted(given)}; "
                "give one of --trt-opt-batch/--trt-max-batch, or a fixed --batch-size"
            )
        size = given.pop() if given else 1
        if size < 1:
            raise InputError(f"the batch size must be at least 1, got {size}")
        return BatchProfile(size, size, size)
    lo = 1 if min_batch is None else min_batch
    hi = max(DEFAULT_MAX_BATCH, lo) if max_batch is None else max_batch
    opt = lo if opt_batch is None else opt_batch
    if not (1 <= lo <= opt <= hi):
        raise InputError(f"the batch profile needs 1 <= min <= opt <= max, got min {lo}, opt {opt}, max {hi}")
    return BatchProfile(lo, opt, hi)
