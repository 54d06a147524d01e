"""An application that follows `MODELS_DIR/current` (runtimes.deploy) without a restart and without failing a call.

    model = runtimes.follow("/opt/models")          # loads current, verified as runtimes.load would
    with model.use() as predictor:                   # the predictor of this moment, kept for the whole call
        predictor.predict(image)
    model.predict(image)                             # the same in one line

Before a call, at most every `check_every_s`, the link is read. When it points to a new version, that version is
loaded (verified, and signed when keys are trusted) in the calling thread while other threads go on with the old
one; then the two are swapped between calls. The old predictor is closed once its last call has returned. A version
that fails to load is logged and skipped (the old one stays) until `current` changes again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..bundle import open_bundle
from ..errors import EdgeTransferError, InputError
from ..predictor import Predictor
from ..signing import KeySource
from .models_folder import VERSIONS, current_path, current_version

logger = logging.getLogger(__name__)


class FollowingPredictor:
    """The predictor of `MODELS_DIR/current`, swapped between calls when a deploy or rollback switches it."""

    def __init__(
        self,
        models_dir: str | os.PathLike[str],
        *,
        check_every_s: float = 1.0,
        trusted_keys: Iterable[KeySource] | None = None,
        device: str | None = None,
        **backend_options: Any,
    ) -> None:
        import math

        if not isinstance(check_every_s, (int, float)) or isinstance(check_every_s, bool) or not math.isfinite(check_every_s) or check_every_s < 0:
            raise InputError(f"check_every_s must be a finite number of seconds >= 0, got {check_every_s!r}")
        self.models_dir = Path(models_dir)
        self.check_every_s = float(check_every_s)
        self._load_args: dict[str, Any] = {
            "trusted_keys": list(trusted_keys) if trusted_keys is not None else None,
            "device": device,
            **backend_options,
        }
        self._lock = threading.Lock()
        self._in_use: dict[int, int] = {}  # id(predictor) -> calls in flight
        self._retired: list[Predictor] = []
        self._loading = False
        self._failed: str | None = None  # a version that failed to load: not retried until current changes
        self._next_check = 0.0
        self.swaps = 0
        path = current_path(self.models_dir)  # read once: the version and the folder loaded always agree
        self.version: str | None = path.name
        self._predictor = self._load(path)

    def _load(self, path: Path) -> Predictor:
        from ..backends import create_predictor

        args = dict(self._load_args)
        return create_predictor(open_bundle(path, trusted_keys=args.pop("trusted_keys")), **args)

    @property
    def predictor(self) -> Predictor:
        """The current predictor (not pinned: use `use()` for a call that must not see it closed)."""
        return self._predictor

    def refresh(self) -> bool:
        """Read the link now; load and swap in a new version. Returns whether it swapped."""
        try:
            version = current_version(self.models_dir)
        except EdgeTransferError as exc:
            logger.warning("%s", exc)
            return False
        with self._lock:
            if version in (self.version, None, self._failed) or self._loading:
                return False
            self._loading = True
        try:
            try:
                fresh = self._load(self.models_dir / VERSIONS / version)
            except EdgeTransferError as exc:
                logger.warning("%s: version %s not loaded, staying on %s: %s", self.models_dir, version, self.version, exc)
                self._failed = version
                return False
            with self._lock:
                old, self._predictor, self.version = self._predictor, fresh, version
                self._failed, self.swaps = None, self.swaps + 1
                self._retired.append(old)
                self._close_idle()
            logger.info("%s: now running %s", self.models_dir, version)
            return True
        finally:
            self._loading = False

    def _close_idle(self) -> None:  # under self._lock
        for p in list(self._retired):
            if not self._in_use.get(id(p)):
                self._retired.remove(p)
                p.close()

    @contextlib.contextmanager
    def use(self) -> Iterator[Predictor]:
        """The predictor of this moment, never closed while the block runs."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self.check_every_s
            self.refresh()
        with self._lock:
            p = self._predictor
            self._in_use[id(p)] = self._in_use.get(id(p), 0) + 1
        try:
            yield p
        finally:
            with self._lock:
                self._in_use[id(p)] -= 1
                if not self._in_use[id(p)]:
                    del self._in_use[id(p)]
                self._close_idle()

    def predict(self, *args: Any, **kwargs: Any) -> Any:
        with self.use() as p:
            return p.predict(*args, **kwargs)

    def embed(self, *args: Any, **kwargs: Any) -> Any:
        with self.use() as p:
            return p.embed(*args, **kwargs)

    def run(self, *args: Any, **kwargs: Any) -> Any:
        with self.use() as p:
            return p.run(*args, **kwargs)

    def close(self) -> None:
        with self._lock:
            self._retired.append(self._predictor)
            for p in self._retired:
                p.close()
            self._retired.clear()

    def __enter__(self) -> FollowingPredictor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def follow(models_dir: str | os.PathLike[str], **kwargs: Any) -> FollowingPredictor:
    """A predictor that follows `models_dir/current` (see `FollowingPredictor`)."""
    return FollowingPredictor(models_dir, **kwargs)
