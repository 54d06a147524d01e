"""The rows of the reliability table about output paths, the signing policy and deploy's history, each run on the
real code path (the CLI in-process, or the API). Used by `scripts/reliability_table.py`; UNTYPED/WRONG rows fail CI."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
from reliability_user_files import cli, refused, typed


def _labelled(root: Path) -> Path:
    from PIL import Image

    for cls in ("7", "8"):
        (root / cls).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((16, 16, 3), 90 * i, np.uint8)).save(root / cls / f"00{i}.png")
    return root


def _made_at(bundle: Path, dst: Path, created: str) -> Path:
    shutil.copytree(bundle, dst)
    (dst / "model.sig").unlink(missing_ok=True)
    doc = json.loads((dst / "manifest.json").read_text())
    doc["created"] = created
    (dst / "manifest.json").write_text(json.dumps(doc, indent=2))
    return dst


def policy_rows(work: Path, bundle: Path) -> list[tuple[str, str]]:
    import runtimes
    from runtimes.signing import generate_key_pair

    work.mkdir(parents=True)
    mine = work / "mine"
    shutil.copytree(bundle, mine)
    data = _labelled(work / "vd")
    user = work / "U"
    (user / "versions" / ".thesis.old-draft").mkdir(parents=True)
    (user / "versions" / ".thesis.old-draft" / "chapter1.txt").write_text("x")
    (work / "notes.txt").write_text("my notes\n")
    (work / "clip.mp4").mkdir()
    rows = [
        ("`deploy B --to U`, U holding versions/.thesis.old-draft/", refused(("deploy", str(mine), "--to", str(user)), user, work)),
        ("`bench B --csv B/manifest.json`", refused(("bench", str(mine), "--csv", str(mine / "manifest.json")), mine, work)),
        ("`bench B --json notes.txt` (a file of the user's)", refused(("bench", str(mine), "--json", str(work / "notes.txt")), work, work)),
        (
            "`val B --data vd --plot vd/7/000.png`",
            refused(("val", str(mine), "--data", str(data), "--plot", str(data / "7" / "000.png")), data, work),
        ),
        ("`bench B --json od/` (a folder)", refused(("bench", str(mine), "--json", str(work / "vd")), data, work)),
        ("`bench B --plot -`", refused(("bench", str(mine), "--plot", "-"), mine, work)),
        ("`rollback --to typo`", refused(("rollback", "--to", str(work / "typo")), mine, work)),
        ("`keygen keys/x.pub`", refused(("keygen", str(work / "keys" / "x.pub")), mine, work)),
        ('`check B --key ""`', refused(("check", str(mine), "--key", ""), mine, work)),
        ("`check B --key /dev/zero`", refused(("check", str(mine), "--key", "/dev/zero"), mine, work)),
        ("`predict B one.png --batch 100000`", refused(("predict", str(mine), str(data / "7" / "000.png"), "--batch", "100000"), mine, work)),
        ("`predict B clip.mp4 --stall-timeout inf`", refused(("predict", str(mine), "x.mp4", "--stall-timeout", "inf"), mine, work)),
    ]
    os.environ["EDGE_TRANSFER_TRUSTED_KEYS"] = ":"
    try:
        rows.append(('`EDGE_TRANSFER_TRUSTED_KEYS=":"`, then load', typed(lambda: runtimes.load(mine))))
    finally:
        del os.environ["EDGE_TRANSFER_TRUSTED_KEYS"]
    _, public, _ = generate_key_pair(work / "k.key")
    from runtimes.bundle import sign_bundle

    signed = work / "signed"
    shutil.copytree(bundle, signed)
    sign_bundle(signed, work / "k.key")
    doc = json.loads((signed / "model.sig").read_text())
    doc["verificationMaterial"] = {"publicKey": "x"}
    (signed / "model.sig").write_text(json.dumps(doc))
    rows.append(("`model.sig` whose verificationMaterial.publicKey is a string", typed(lambda: runtimes.load(signed, trusted_keys=[public]))))
    models = work / "models"
    older, newer = _made_at(bundle, work / "A", "2026-01-01T00:00:00Z"), _made_at(bundle, work / "B", "2026-02-01T00:00:00Z")
    runtimes.deploy(older, models)
    runtimes.deploy(newer, models)
    rows.append(("deploy A, deploy B, deploy A again (an older bundle replayed)", typed(lambda: runtimes.deploy(older, models))))
    code, out, err = cli("predict", str(mine), str(work / "clip.mp4"))
    rows.append(("a folder named `clip.mp4`", f"refused: `{err.strip().splitlines()[-1]}`" if code == 2 else f"WRONG: exit {code} {err[:200]}"))
    return rows
