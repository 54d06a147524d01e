"""The command line's writing flags: every flag or argument that names a path a command writes is declared with
`writes(rule)`, and `check_writes` holds each value given to `runtimes.outputs.check_output` before the command runs.
The inputs it must keep clear of are every other path the command was given (its bundle, --data, images, keys)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from typing import Any

from runtimes.outputs import OutputRule, Protected, check_output


class _Writes(argparse._StoreAction):
    """`store`, carrying the `OutputRule` the value is checked against."""

    def __init__(self, *args: Any, output: OutputRule, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.output = output


def writes(rule: OutputRule) -> dict[str, Any]:
    """`add_argument` keywords for a flag that writes a path: `p.add_argument("--csv", **writes(rule), help=...)`."""
    return {"action": _Writes, "output": rule}


def flag_name(action: argparse.Action) -> str:
    """How the user typed it: the long option, or the positional's name."""
    longs = [o for o in action.option_strings if o.startswith("--")]
    return longs[0] if longs else action.option_strings[0] if action.option_strings else action.dest


def command_parser(parser: argparse.ArgumentParser, command: str) -> argparse.ArgumentParser:
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    found: argparse.ArgumentParser = sub.choices[command]
    return found


def writing_actions(parser: argparse.ArgumentParser) -> Iterator[argparse.Action]:
    """The actions of one command's parser that write a path."""
    return (a for a in parser._actions if isinstance(a, _Writes))


def _inputs(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str]]:
    """(dest, path) for every other value the command was given that names an existing path."""
    found = []
    for action in parser._actions:
        if isinstance(action, _Writes) or action.choices is not None or action.nargs == 0:
            continue
        value = getattr(args, action.dest, None)
        for v in value if isinstance(value, list) else [value]:
            if isinstance(v, str) and v and v != "-" and os.path.lexists(v):
                found.append((action.dest, v))
    return found


def check_writes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every writing flag's value through the one output rule, before the command does any work."""
    command = command_parser(parser, args.command)
    inputs = _inputs(command, args)
    for action in writing_actions(command):
        value = getattr(args, action.dest, None)
        if value is None:
            continue
        rule: OutputRule = action.output  # type: ignore[attr-defined]
        flag = flag_name(action)
        protected = [Protected(_input_name(command, dest), path, may_hold_output=dest in rule.may_lie_inside) for dest, path in inputs]
        check_output(value, rule, protected=protected, overwrite=bool(getattr(args, "overwrite", False)), flag=flag)


INPUT_NAMES = {"run": "the source run", "bundle": "the bundle", "bundles": "a bundle measured", "images": "the images"}


def _input_name(parser: argparse.ArgumentParser, dest: str) -> str:
    """How an input is named in a refusal: "--data", "the source run"."""
    if dest in INPUT_NAMES:
        return INPUT_NAMES[dest]
    return flag_name(next(a for a in parser._actions if a.dest == dest))
