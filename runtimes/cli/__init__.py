"""The `edge-transfer` command line's front door, in the runtime distribution: the device commands (predict, val,
enroll, identify, imprint, check, bench, inspect, build-engine, keygen, sign, deploy, rollback) need only `runtimes`
and one backend. The host distribution adds train, export, qat, probe-layers and demo through the
`edge_transfer.commands` entry point; on a device without it, those commands say what to install."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import EdgeTransferError

DEVICE_EPILOG = """
on the device (runtimes only):
  edge-transfer check bundles/digits --inference-precision bf16
  edge-transfer predict bundles/imagenet cat.jpg --top-k 3
  edge-transfer predict bundles/digits clip.mp4 --every 3 --jsonl
  edge-transfer enroll bundles/emb --gallery objects.npz --from-folders reference/
  edge-transfer identify bundles/emb --gallery objects.npz camera/ --json
  edge-transfer imprint bundles/digits-x --classes added.npz --label nine shots/nine/
  edge-transfer inspect bundles/digits --json
  edge-transfer bench bundles/digits-all/onnx bundles/digits-all/onnx-int8 --batch 1,8
  edge-transfer keygen keys/release.key && edge-transfer sign bundles/digits --key keys/release.key
  edge-transfer deploy bundles/digits --to /opt/models --key keys/release.pub
  edge-transfer rollback --to /opt/models
"""
EXIT_CODES = {
    0: "done (check: PASS)",
    1: "it ran, and the answer is no: check or a self-test FAILED on this device, or a video source failed part-way",
    2: "refused: bad input or flags, a bundle that does not verify or is not trusted, a missing extra, an output path",
    130: "interrupted (Ctrl-C); what was done so far is reported",
}
EXIT_EPILOG = "exit codes (every command):\n" + "\n".join(f"  {code:<4} {what}" for code, what in EXIT_CODES.items()) + "\n"
HOST_COMMANDS = ("train", "export", "qat", "probe-layers", "demo")
ENTRY_POINT_GROUP = "edge_transfer.commands"
POSITIONAL_IMAGES = ("predict", "enroll", "identify", "imprint")  # commands whose image files may come before and after options


def _host_plugins() -> list[Callable[[argparse.ArgumentParser, Any], None]]:
    """The host distribution's command registrars, when it is installed and importable."""
    from importlib.metadata import entry_points

    plugins = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            plugins.append(ep.load())
        except ImportError:  # installed but broken (a host package missing): the device commands still work
            continue
    return plugins


def _host_missing(args: argparse.Namespace) -> int:
    from .output import err

    err(f"error: '{args.command}' is a host command and this is a device install; on the host machine: pip install 'edge-transfer[host]'")
    return 2


def _version() -> str:
    from .. import __version__

    return __version__


def build_parser() -> argparse.ArgumentParser:
    """The device commands, then those the host distribution adds (or stand-ins that name it)."""
    from .bench import add_bench_parser
    from .device import add_build_engine_parser, add_check_parser, add_inspect_parser, add_predict_parser
    from .fleet import add_fleet_parsers
    from .gallery import add_gallery_parsers
    from .imprint import add_imprint_parser
    from .val import add_val_parser

    p = argparse.ArgumentParser(
        prog="edge-transfer",
        description="Run validated edge-transfer bundles on this device, check them, and install them safely.",
        epilog=DEVICE_EPILOG + "\n" + EXIT_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"edge-transfer {_version()}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)
    plugins = _host_plugins()
    for register in plugins:
        register(p, sub)
    for add in (add_predict_parser, add_val_parser, add_gallery_parsers, add_imprint_parser, add_check_parser, add_bench_parser):
        add(sub)
    add_fleet_parsers(sub)
    add_build_engine_parser(sub)
    add_inspect_parser(sub)
    for name in HOST_COMMANDS if not plugins else ():
        h = sub.add_parser(name, help="(host command: pip install 'edge-transfer[host]')", add_help=False)
        h.add_argument("rest", nargs=argparse.REMAINDER)
        h.set_defaults(func=_host_missing)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from .output import configure_logging, err, host_install_hint, out_of_range, reader_gone
    from .writes import check_writes

    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if args.func is _host_missing:
        return _host_missing(args)
    if extra and args.command in POSITIONAL_IMAGES and not any(x.startswith("-") for x in extra):
        args.images += extra  # files after the options (`enroll B --gallery G --label L a.jpg`): argparse took none
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if (problem := out_of_range(parser, args)) is not None:  # every numeric flag, before any work
        err(f"error: {problem}")
        return 2
    try:
        check_writes(parser, args)  # every path the command writes, through the one output rule, before any work
    except EdgeTransferError as exc:
        err(f"error: {exc}")
        return 2
    for stream in (sys.stdout, sys.stderr):  # labels and file names from a bundle may hold unprintable characters
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    # progress lines on stderr unless --quiet; --json (stdout) silences them too, except for commands whose progress
    # is their only sign of life (json_keeps_progress: train, qat)
    json_silences = getattr(args, "json", None) is True and not getattr(args, "json_keeps_progress", False)
    configure_logging(verbose=not getattr(args, "quiet", False) and not json_silences)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, inside the handler below, not at interpreter exit
        return code
    except EdgeTransferError as exc:
        err(f"error: {exc}")
        return 2
    except ModuleNotFoundError as exc:
        if (hint := host_install_hint(exc, args.command)) is None:
            raise
        err(hint)
        return 2
    except BrokenPipeError:  # `edge-transfer enroll ... --list | head`: the reader has gone; stop quietly, as cat does
        return reader_gone()
    except KeyboardInterrupt:
        interrupted = getattr(args, "interrupted", None)
        err("interrupted" + (interrupted(args) if interrupted is not None else ""))
        return 130
