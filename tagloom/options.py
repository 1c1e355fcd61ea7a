"""Options declared once.

A dataclass field made with :func:`option` carries its command-line flag(s), help text and choices
next to its type and default. The argparse parser (:func:`add_arguments`), the ComfyUI node's flag
strings (:func:`flag`) and the values record (:func:`from_args`) are all generated from that one
declaration, so the help, the default shown and the flag a node passes can never drift apart.
Plain Python: the trainers' option records and the CLI share it without importing each other.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, field, fields
from pathlib import Path
from typing import Any

# Field types (as written in the dataclass, under `from __future__ import annotations`) -> parser.
_PARSERS = {"int": int, "float": float, "str": str, "Path": Path, "dict": json.loads}


def option(default: Any = MISSING, help: str = "", *, flags: tuple[str, ...] = (), choices=None,
           positional: bool = False, metavar: str | None = None, default_factory=MISSING):
    """A dataclass field with its CLI declaration. ``flags``: the flag first, then aliases kept for
    old scripts (default ``--field-name``). A bool defaulting to True gets ``--no-<name>``."""
    meta = {"help": help, "flags": tuple(flags), "choices": choices, "positional": positional, "metavar": metavar}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=meta)
    return field(default=default, metadata=meta)


def _kebab(name: str) -> str:
    return name.replace("_", "-")


def _type_name(f) -> str:
    t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    return t.replace(" | None", "").replace("None | ", "").strip()


def _default(f):
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def declared(cls) -> list:
    """The fields of ``cls`` that are command-line options (made with :func:`option`)."""
    return [f for f in fields(cls) if "help" in f.metadata]


def flag(cls, name: str) -> str:
    """The command-line flag of field ``name`` (what a node passes to the trainer's CLI)."""
    for f in declared(cls):
        if f.name == name:
            if f.metadata["positional"]:
                raise ValueError(f"{name} is positional")
            if _type_name(f) == "bool" and _default(f) is True:
                return f"--no-{_kebab(name)}"
            return (f.metadata["flags"] or (f"--{_kebab(name)}",))[0]
    raise KeyError(name)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One argparse argument per declared field of ``cls``; help texts show the defaults."""
    for f in declared(cls):
        m, typ, default = f.metadata, _type_name(f), _default(f)
        kw: dict[str, Any] = {"help": m["help"]}
        if m["positional"]:
            parser.add_argument(f.name, type=_PARSERS.get(typ, str), metavar=m["metavar"], **kw)
            continue
        flags = m["flags"] or (f"--{_kebab(f.name)}",)
        kw["dest"] = f.name
        if typ == "bool":
            if default is True:
                flags = (f"--no-{_kebab(f.name)}",) + tuple(x for x in m["flags"] if x.startswith("--no-"))
                parser.add_argument(*flags, action="store_false", default=True, **kw)
            else:
                parser.add_argument(*flags, action="store_true", default=False, **kw)
            continue
        if default is MISSING:
            kw["required"] = True
        else:
            kw["default"] = json.dumps(default) if typ == "dict" else default
        if m["choices"]:
            kw["choices"] = m["choices"]
        if m["metavar"]:
            kw["metavar"] = m["metavar"]
        parser.add_argument(*flags, type=_PARSERS.get(typ, str), **kw)


def from_args(cls, args: argparse.Namespace):
    """The options record from parsed arguments (fields the parser lacks keep their defaults)."""
    values = {}
    for f in fields(cls):
        if hasattr(args, f.name):
            v = getattr(args, f.name)
            if _type_name(f) == "dict" and isinstance(v, str):
                v = json.loads(v)
            values[f.name] = v
    return cls(**values)


class HelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help when it has a real default the text does not
    already state; None, False and empty defaults mean "off / use the model's", which the help
    text itself says."""

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (not action.option_strings and action.nargs not in ("?", "*")) or d is argparse.SUPPRESS:
            return text
        if d is None or d is False or d is True or d == [] or d == "" or d == "{}":
            return text
        if "%(default)" in text or "default" in text.lower():
            return text
        return f"{text} (default: %(default)s)"
