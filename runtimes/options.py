"""Options objects: one dataclass per job, each field's default written once, overridden by keyword."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from .errors import InputError

Options = TypeVar("Options")


def replace_options(options: Options, overrides: Mapping[str, Any], *, what: str) -> Options:
    """`options` (a dataclass instance) with `overrides` applied; an unknown name is an InputError listing the known."""
    known = [f.name for f in dataclasses.fields(options)]  # type: ignore[arg-type]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(f"unknown {what} option(s) {', '.join(unknown)} (known: {', '.join(known)})")
    return dataclasses.replace(options, **overrides)  # type: ignore[type-var]


def options_from_namespace(cls: type[Options], values: Any, **extra: Any) -> Options:
    """`cls` from the attributes of `values` (e.g. parsed CLI flags) named like its fields, plus `extra`."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in vars(values).items() if k in names}, **extra)
