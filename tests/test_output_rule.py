"""One output rule for every path a command writes: the writing flags are enumerated from the CLI's own parsers (a
new flag that names a path must be declared, as a writer or as something else), and each is driven at the user's
data folder, a labelled image, a bundle's manifest, a path inside a bundle, a file the user owns and a folder
holding one. Every case is refused with one `error:` line before any work, and the user's files hash the same
before and after. Real CLI invocations; nothing is mocked."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest
from test_user_files import one_error, tree

from conftest import run_cli, write_image_folder

# Every argument that takes a value and is not a path the command writes (numbers and fixed choices are left out:
# they cannot name a path). A new path argument fails test_every_path_argument_is_declared until it is listed here
# or declared with runtimes.cli.writes.writes(rule).
NOT_WRITTEN = {
    "train": {"--data", "--backbone", "--text-column", "--label-column", "--features"},
    "qat": {"run", "--data"},
    "probe-layers": {"--data", "--backbone", "--layers", "--device"},
    "export": {
        "run",
        "--backbone",
        "--strategy",
        "--features",
        "--format",
        "--data",
        "--text-column",
        "--label-column",
        "--calibration-data",
        "--sign-key",
    },
    "demo": set(),
    "predict": {"bundle", "images", "--text", "--text-file", "--classes", "--device", "--min-score"},
    "val": {"bundle", "--data", "--text-column", "--label-column", "--device", "--min-score"},
    "enroll": {"bundle", "images", "--text", "--text-file", "--label", "--from-folders", "--remove", "--device"},
    "identify": {"bundle", "images", "--text", "--text-file", "--gallery", "--min-score", "--device"},
    "imprint": {"bundle", "images", "--label", "--remove", "--device"},
    "check": {"bundle", "--device", "--key"},
    "bench": {"bundles", "--batch", "--tokens", "--device", "--images", "--data"},
    "keygen": set(),
    "sign": {"--key"},
    "deploy": {"bundle", "--key", "--device"},
    "rollback": {"--key", "--device"},
    "build-engine": {"bundle", "--data"},
    "inspect": {"bundle", "--key"},
}
# A command line per command, every writing argument at a fresh path ("@NAME": a positional that writes).
BASE = {
    "train": ["train", "--data", "{D}", "--out", "fresh/run", "--cache-dir", "fresh/cache"],
    "qat": ["qat", "{R}", "--data", "{D}", "--out", "fresh/qat"],
    "probe-layers": ["probe-layers", "--data", "{D}", "--cache-dir", "fresh/cache"],
    "export": ["export", "{R}", "--data", "{D}", "--out", "fresh/bundle"],
    "demo": ["demo", "--out", "fresh/demo"],
    "val": ["val", "{B}", "--data", "{D}", "--plot", "fresh.png"],
    "enroll": ["enroll", "{B}", "--gallery", "fresh.npz", "--label", "x", "{D}/zero"],
    "imprint": ["imprint", "{B}", "--classes", "fresh.npz", "--label", "x", "{D}/zero"],
    "bench": ["bench", "{B}", "--data", "{D}", "--json", "fresh.json", "--csv", "fresh.csv", "--plot", "fresh.png"],
    "keygen": ["keygen", "@key"],
    "sign": ["sign", "@bundle", "--key", "fresh.key"],
    "deploy": ["deploy", "{B}", "--to", "fresh/models"],
    "rollback": ["rollback", "--to", "fresh/models"],
    "build-engine": ["build-engine", "{B}", "--data", "{D}", "--out", "fresh/engine", "--cache-dir", "fresh/engines"],
}
# The user's things every writing argument is pointed at ({D}: their labelled data, {B}: a bundle they run).
TARGETS = [
    "{D}",
    "{D}/zero/0.png",
    "{D}/zero/new-output",
    "{B}/manifest.json",
    "{B}/new-output",
    "{R}/new-output",
    "proj/notes.txt",
    "proj/src",
    "-",
    "",
]


def _commands() -> dict[str, argparse.ArgumentParser]:
    from runtimes.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def _writing_flags() -> list[tuple[str, str]]:
    from runtimes.cli.writes import flag_name, writing_actions

    return [(name, flag_name(a)) for name, p in _commands().items() for a in writing_actions(p)]


WRITING = _writing_flags()


def test_every_path_argument_is_declared():
    from runtimes.cli.writes import flag_name, writing_actions

    for name, p in _commands().items():
        if name not in NOT_WRITTEN:  # a host command stand-in on a device install
            continue
        writers = {flag_name(a) for a in writing_actions(p)}
        valued = {
            flag_name(a)
            for a in p._actions
            if a.nargs != 0 and a.choices is None and a.type not in (int, float) and not isinstance(a, argparse._HelpAction)
        }
        assert valued - writers == NOT_WRITTEN[name], f"{name}: declare each new path argument as written (writes(rule)) or list it"
        assert name in BASE or not writers, f"{name}: writes {writers}; give it a command line in BASE"
    assert {c for c, _ in WRITING} == set(BASE)


@pytest.fixture(scope="module")
def user_things(tmp_path_factory: pytest.TempPathFactory, digits_bundle: Path, digits_run) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("user")
    write_image_folder(root / "proj" / "photos", per_class=2)
    (root / "proj" / "notes.txt").write_text("my notes\n")
    (root / "proj" / "src").mkdir()
    (root / "proj" / "src" / "app.py").write_text("print('mine')\n")
    shutil.copytree(digits_bundle, root / "bundle")
    return {"root": root, "D": root / "proj" / "photos", "B": root / "bundle", "R": Path(digits_run.path)}


def _argv(command: str, flag: str, target: str, things: dict[str, Path]) -> list[str]:
    argv = list(BASE[command])
    if flag.startswith("--"):
        argv[argv.index(flag) + 1] = target
    else:
        argv[argv.index(f"@{flag}")] = target
    subs = {k: str(v) for k, v in things.items() if k in "DBR"}
    return [a.format(**subs) for a in argv]


@pytest.mark.parametrize("command, flag", WRITING)
def test_each_writing_flag_never_touches_what_the_user_owns(user_things: dict[str, Path], command: str, flag: str, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(user_things["root"])
    before = tree(user_things["root"] / "proj"), tree(user_things["B"]), tree(user_things["R"])
    stream = (command, flag) in {("bench", "--json"), ("bench", "--csv")}
    for target in TARGETS:
        if target == "-" and stream:
            continue  # standard output: a stream, tested with a real measurement in test_reports_go_to_standard_output
        if target.startswith("{R}") and (command, flag) == ("qat", "--out"):
            continue  # RUN/qat is where a qat run goes by default: the one place inside a run
        r = run_cli(*_argv(command, flag, target.format(D=user_things["D"], B=user_things["B"], R=user_things["R"]), user_things))
        line = one_error(r)
        assert flag in line or command in ("keygen", "sign"), line
        after = tree(user_things["root"] / "proj"), tree(user_things["B"]), tree(user_things["R"])
        assert after == before, f"{command} {flag} {target} changed the user's files"
    assert not (user_things["root"] / "fresh").exists()


def test_reports_go_to_standard_output_and_replace_only_their_own_files(digits_bundle: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    quick = ("bench", str(digits_bundle), "--iterations", "5", "--warmup", "2", "--quiet")
    r = run_cli(*quick, "--json", "-")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)  # standard output holds the report alone; the table went to stderr
    assert doc["written_by"] == "edge-transfer bench" and doc["rows"] and "p50" in r.stderr
    assert not Path("-").exists()
    r = run_cli(*quick, "--csv", "-", "--json", "-")
    one_error(r, "only one report can go to standard output")
    r = run_cli(*quick, "--json", "bench.json", "--csv", "bench.csv")
    assert r.returncode == 0, r.stderr
    first = Path("bench.json").read_text()
    r = run_cli(*quick, "--json", "bench.json", "--csv", "bench.csv")  # our own reports are replaced
    assert r.returncode == 0 and Path("bench.json").read_text() != first, r.stderr
    Path("notes.json").write_text('{"mine": true}\n')
    r = run_cli(*quick, "--json", "notes.json")
    one_error(r, "--json notes.json", "not a bench report (JSON) edge-transfer wrote")
    assert Path("notes.json").read_text() == '{"mine": true}\n'
    for flag, target, needle in (("--json", "od", "is a folder"), ("--csv", "nope/x.csv", "does not exist"), ("--plot", "-", "standard output")):
        Path("od").mkdir(exist_ok=True)
        one_error(run_cli(*quick, flag, target), needle)
    one_error(run_cli("export", "run", "--out", "-"), "--out -")
    assert not Path("-").exists()
