"""One table of exit codes for every command (runtimes.cli.EXIT_CODES, shown in --help and the device guide): 0 done,
1 it ran and the answer is no, 2 refused with one `error:` line, 130 interrupted. Real CLI invocations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from test_user_files import one_error

from conftest import rehash_bundle, run_cli

# every command, given something it must refuse (a bundle, run or folder that does not exist, a file it must not replace)
REFUSED = {
    "train": ["train", "--data", "missing-data", "--out", "fresh-run"],
    "qat": ["qat", "missing-run"],
    "probe-layers": ["probe-layers", "--data", "missing-data"],
    "export": ["export", "missing-run", "--out", "fresh-bundle"],
    "demo": ["demo", "--out", "notes.txt"],
    "predict": ["predict", "missing-bundle", "a.png"],
    "val": ["val", "missing-bundle", "--data", "missing-data"],
    "enroll": ["enroll", "missing-bundle", "--gallery", "g.npz", "--label", "x", "a.png"],
    "identify": ["identify", "missing-bundle", "--gallery", "g.npz", "a.png"],
    "imprint": ["imprint", "missing-bundle", "--classes", "c.npz", "--label", "x", "a.png"],
    "check": ["check", "missing-bundle"],
    "bench": ["bench", "missing-bundle"],
    "keygen": ["keygen", "notes.txt"],
    "sign": ["sign", "missing-bundle", "--key", "k.key"],
    "deploy": ["deploy", "missing-bundle", "--to", "models"],
    "rollback": ["rollback", "--to", "models"],
    "build-engine": ["build-engine", "missing-bundle"],
    "inspect": ["inspect", "missing-bundle"],
}


def test_every_command_exits_2_with_one_error_line_when_it_refuses(tmp_path: Path, monkeypatch):
    from runtimes.cli import EXIT_CODES, build_parser

    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine\n")
    commands = set(next(a for a in build_parser()._actions if hasattr(a, "choices") and isinstance(a.choices, dict)).choices)
    assert commands == set(REFUSED), "give every command a refusal here"
    for argv in REFUSED.values():
        one_error(run_cli(*argv))
    assert (tmp_path / "notes.txt").read_text() == "mine\n" and sorted(EXIT_CODES) == [0, 1, 2, 130]
    assert all(f"  {code}" in run_cli("--help").stdout for code in EXIT_CODES)


def test_check_exits_0_on_pass_1_on_fail_and_2_when_refused(digits_bundle: Path, bundle_copy: Path, tmp_path: Path):
    assert run_cli("check", str(digits_bundle)).returncode == 0
    reference = bundle_copy / "selftest" / "reference_logits.npy"
    np.save(reference, -np.load(reference))
    rehash_bundle(bundle_copy)
    r = run_cli("check", str(bundle_copy))
    assert r.returncode == 1 and r.stdout.rstrip().endswith("FAIL") and r.stderr.count("error:") == 1
    assert run_cli("keygen", str(tmp_path / "k.key")).returncode == 0
    one_error(run_cli("check", str(digits_bundle), "--key", str(tmp_path / "k.pub")), "unsigned")
    r = run_cli("check", str(digits_bundle), "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["passed"]
