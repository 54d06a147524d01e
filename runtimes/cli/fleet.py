"""Delivery to devices: `keygen` and `sign` (signed bundles, runtimes.signing), `deploy` and `rollback` (safe
updates of MODELS_DIR/current, runtimes.deploy). Torch-free."""

from __future__ import annotations

import argparse
from typing import Any

from runtimes.bundle import BUNDLE
from runtimes.fleet.deploy import DEFAULT_KEEP, MODELS
from runtimes.outputs import OutputRule
from runtimes.signing import KEY_FILE, KEYS_ENV, PASSWORD_ENV

from .output import PRECISION_CHOICES, PRECISION_HELP, err, precision_option, print_json
from .writes import writes

KEY_HELP = f"a trusted public key (.pub) or a folder of them; repeat for several (default: {KEYS_ENV}, if set)"


def add_key_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--key", action="append", metavar="PUB", help=KEY_HELP)


def trusted_keys_option(args: argparse.Namespace) -> dict[str, Any]:
    """`trusted_keys=` for runtimes.load: the --key files when given, else the environment's (None)."""
    return {"trusted_keys": args.key} if getattr(args, "key", None) else {}


def add_fleet_parsers(sub: Any) -> None:
    k = sub.add_parser(
        "keygen",
        help="make a key pair for signing bundles (ECDSA P-256, PEM)",
        description=f"Write a private key (mode 0600; encrypted when {PASSWORD_ENV} is set) and its public key beside it "
        "(NAME.pub). Keep the private key on the build machine; copy the .pub file to the devices. Existing files are never replaced.",
        epilog="example:\n  edge-transfer keygen keys/release.key   # writes keys/release.key and keys/release.pub",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    k.add_argument(
        "key",
        **writes(OutputRule("file", KEY_FILE, make_parents=True)),
        help="the private key file to create (the public key is written beside it as .pub)",
    )
    k.set_defaults(func=cmd_keygen)

    s = sub.add_parser(
        "sign",
        help="sign a bundle with a private key (writes BUNDLE/model.sig)",
        description="Check every file of the bundle, then sign its manifest (which holds every file's sha256) and write "
        "model.sig in OpenSSF model-signing's format (so `model_signing verify key` accepts it too). An older signature is replaced.",
    )
    s.add_argument("bundle", **writes(OutputRule("bundle", BUNDLE)), help="the bundle to sign (model.sig is written inside it)")
    s.add_argument("--key", required=True, help=f"the private key (from keygen; {PASSWORD_ENV} decrypts an encrypted one)")
    s.set_defaults(func=cmd_sign)

    d = sub.add_parser(
        "deploy",
        help="install a bundle on this device as MODELS_DIR/current, only after it passed its checks here",
        description="Copy the bundle into MODELS_DIR/versions/, verify its checksums (and signature, with --key or "
        f"{KEYS_ENV}), run its self-test on this device in the precision it will run in, and only then switch "
        "MODELS_DIR/current to it atomically. A bundle that fails a step never becomes current; the reason is printed and "
        "appended to MODELS_DIR/deploy.log. Applications that load MODELS_DIR/current through runtimes.follow() pick it up between calls.",
        epilog="examples:\n  edge-transfer deploy incoming/model --to /opt/models --key /etc/edge-transfer/release.pub\n"
        "  edge-transfer rollback --to /opt/models",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument("bundle", help="the bundle to install (as exported, or a plain copy of it received by rsync/scp)")
    d.add_argument(
        "--to",
        required=True,
        metavar="MODELS_DIR",
        **writes(OutputRule("models", MODELS)),
        help="the models folder: absent or empty (it is created), or one deploy made",
    )
    d.add_argument(
        "--keep",
        type=int,
        default=DEFAULT_KEEP,
        help=f"versions kept, the current one included (default {DEFAULT_KEEP}); the version current before it is always kept",
    )
    d.add_argument(
        "--allow-downgrade",
        action="store_true",
        help="install a bundle made before the current one (refused by default: an old bundle replayed is a downgrade)",
    )
    _device_options(d)
    d.set_defaults(func=cmd_deploy)

    r = sub.add_parser(
        "rollback",
        help="switch MODELS_DIR/current back to the previous version that still passes its checks",
        description="Point MODELS_DIR/current at the newest version older than the current one that still verifies "
        "(checksums, signature with --key) and passes its self-test here.",
    )
    r.add_argument(
        "--to", required=True, metavar="MODELS_DIR", **writes(OutputRule("models", MODELS, must_exist=True)), help="the models folder deploy made"
    )
    _device_options(r)
    r.set_defaults(func=cmd_rollback)


def _device_options(p: argparse.ArgumentParser) -> None:
    add_key_option(p)
    p.add_argument("--device", help="backend device, as the application loads it (default cpu)")
    p.add_argument("--inference-precision", choices=PRECISION_CHOICES, help=PRECISION_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def cmd_keygen(args: argparse.Namespace) -> int:
    from runtimes.signing import generate_key_pair

    private, public, key_id = generate_key_pair(args.key)
    print(f"wrote {private} (private: keep it on the build machine) and {public} (public: copy it to the devices)")
    print(f"key id {key_id[:12]}")
    return 0


def cmd_sign(args: argparse.Namespace) -> int:
    from runtimes.bundle import sign_bundle

    key_id = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle} with key {key_id[:12]} ({args.bundle}/model.sig)")
    return 0


def _report(args: argparse.Namespace, verb: str, result: Any) -> int:
    if args.json:
        print_json(
            {
                "current": result.version,
                "path": str(result.path),
                "previous": result.previous,
                "removed": list(result.removed),
                "self_test": result.self_test,
                "signed_by": result.signed_by,
                "unchanged": result.unchanged,
                "notes": list(result.notes),
            }
        )
        for note in result.notes:
            err(f"note: {note}")
        return 0
    for note in result.notes:
        err(f"note: {note}")
    if result.unchanged:
        print(f"{result.version} is already current ({result.path}): the same manifest and signature; nothing installed")
        if result.removed:
            print(f"removed old version(s): {', '.join(result.removed)}")
        return 0
    signed = f", signed by key {result.signed_by[:12]}" if result.signed_by else ""
    print(f"{verb} {result.version} ({result.path}){signed}; previous: {result.previous or 'none'}")
    print(result.self_test)
    if result.removed:
        print(f"removed old version(s): {', '.join(result.removed)}")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from runtimes.fleet.deploy import deploy

    result = deploy(
        args.bundle,
        args.to,
        keep=args.keep,
        device=args.device,
        allow_downgrade=args.allow_downgrade,
        **trusted_keys_option(args),
        **precision_option(args),
    )
    return _report(args, "current is now", result)


def cmd_rollback(args: argparse.Namespace) -> int:
    from runtimes.fleet.deploy import rollback

    result = rollback(args.to, device=args.device, **trusted_keys_option(args), **precision_option(args))
    return _report(args, "rolled back: current is now", result)
