"""Declarative config schemas: every key has a type, a default and a meaning.

A schema maps TOML sections to their keys. ``load_toml`` reads a file and
``validate`` checks it against a schema, naming the file and the key of every
problem; defaults fill what the file leaves out. ``schema_markdown`` renders a
schema as the reference table in ``docs/configuration.md``.
"""

from __future__ import annotations

import difflib
import math
import os
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tasks.errors import UserError


class ConfigError(UserError):
    """A config file or value the user gave is wrong (shown as one line, no traceback)."""


@dataclass(frozen=True)
class Key:
    """One config key: its name, type, default and meaning.

    ``kind`` is one of ``int``, ``float``, ``str``, ``bool``, ``path``, ``list[int]``,
    ``list[float]``, ``list[str]``. A ``path`` is a string naming something the run reads;
    a relative one is resolved against the folder of the config file that gives it (an empty
    one stays empty). ``choices`` restricts values (each element for lists); ``minimum`` and
    ``maximum`` bound numbers inclusively, ``above`` exclusively (each element for lists); a
    float is never NaN or infinite; ``length`` fixes a list's length; ``check`` returns a
    problem description or None.
    A ``required`` key has no default and must be given.
    """

    name: str
    kind: str
    default: Any
    help: str
    choices: tuple[Any, ...] | None = None
    minimum: float | None = None
    maximum: float | None = None
    above: float | None = None
    length: int | None = None
    check: Callable[[Any], str | None] | None = None
    required: bool = False


Schema = Mapping[str, tuple[Key, ...]]

_SCALARS: dict[str, tuple[type, ...]] = {
    "int": (int,),
    "float": (int, float),
    "str": (str,),
    "path": (str,),
    "bool": (bool,),
}


def _check_scalar(kind: str, value: Any) -> bool:
    if kind != "bool" and isinstance(value, bool):
        return False
    return isinstance(value, _SCALARS[kind])


def check_value(key: Key, value: Any) -> Any:
    """Return ``value`` converted to the key's type, or raise ValueError saying what is wrong."""
    if key.kind.startswith("list["):
        inner = key.kind[5:-1]
        if not isinstance(value, list) or not all(_check_scalar(inner, v) for v in value):
            raise ValueError(f"must be a list of {inner}, got {value!r}")
        if key.length is not None and len(value) != key.length:
            raise ValueError(f"must have {key.length} entries, got {len(value)}")
        items = value
    else:
        if not _check_scalar(key.kind, value):
            raise ValueError(f"must be {key.kind}, got {value!r}")
        items = [value]
    for item in items:
        if key.choices is not None and item not in key.choices:
            raise ValueError(f"must be one of {', '.join(map(str, key.choices))}; got {item!r}")
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"must be a finite number, got {item!r}")
        if key.minimum is not None and item < key.minimum:
            raise ValueError(f"must be >= {key.minimum:g}, got {item!r}")
        if key.above is not None and item <= key.above:
            raise ValueError(f"must be > {key.above:g}, got {item!r}")
        if key.maximum is not None and item > key.maximum:
            raise ValueError(f"must be <= {key.maximum:g}, got {item!r}")
    if key.check is not None and (problem := key.check(value)):
        raise ValueError(problem)
    if key.kind == "float":
        return float(value)
    if key.kind == "list[float]":
        return [float(v) for v in value]
    return list(value) if isinstance(value, list) else value


def below(limit: float) -> Callable[[Any], str | None]:
    """A ``check`` refusing values at or above ``limit`` (an exclusive upper bound)."""
    return lambda value: None if value < limit else f"must be < {limit:g}, got {value!r}"


def unknown_name(where: str, name: str, known: list[str], what: str = "key") -> ConfigError:
    """The error for a key (or section) the schema does not have: the closest known one, or
    every known one."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else f" (known: {', '.join(sorted(known))})"
    return ConfigError(f"{where}: unknown {what} '{name}'{hint}")


def validate(raw: Mapping[str, Any], schema: Schema, where: str,
             base: Path | None = None) -> dict[str, dict[str, Any]]:
    """Check ``raw`` (parsed TOML) against ``schema``; return every section with defaults filled
    and relative ``path`` values given in ``raw`` resolved against ``base`` (the config file's
    folder; None leaves them as they are).

    Raises ConfigError naming ``where`` (the file) and the dotted key.
    """
    for section, body in raw.items():
        if section not in schema:
            raise unknown_name(where, section, list(schema), "section")
        if not isinstance(body, Mapping):
            raise ConfigError(f"{where}: '{section}' must be a table ([{section}])")
    out: dict[str, dict[str, Any]] = {}
    for section, keys in schema.items():
        body = raw.get(section, {})
        by_name = {k.name: k for k in keys}
        for name in body:
            if name not in by_name:
                raise unknown_name(where, f"{section}.{name}", [f"{section}.{k}" for k in by_name])
        values: dict[str, Any] = {}
        for key in keys:
            if key.name in body:
                try:
                    values[key.name] = check_value(key, body[key.name])
                except ValueError as e:
                    raise ConfigError(f"{where}: {section}.{key.name} {e}") from None
                if key.kind == "path" and base is not None and values[key.name]:
                    values[key.name] = os.path.normpath(base / values[key.name])
            elif key.required:
                raise ConfigError(
                    f"{where}: missing required key {section}.{key.name} ({key.help})")
            else:
                values[key.name] = key.default
        out[section] = values
    return out


def load_toml(path: Path) -> dict[str, Any]:
    """Parse a TOML file, with a one-line error for a missing or malformed file."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not valid TOML ({e})") from None


def schema_markdown(title: str, schema: Schema) -> str:
    """The reference table of a schema: key, type, default, meaning."""
    lines = [f"## {title}", "", "| key | type | default | meaning |", "| --- | --- | --- | --- |"]
    for section, keys in schema.items():
        for key in keys:
            default = "(required)" if key.required else f"`{key.default!r}`"
            meaning = key.help
            if key.choices:
                meaning += f" One of: {', '.join(f'`{c}`' for c in key.choices)}."
            if bounds := _bounds(key):
                meaning += f" Range: {bounds}."
            lines.append(f"| `{section}.{key.name}` | {key.kind} | {default} | {meaning} |")
    return "\n".join(lines) + "\n"


def _bounds(key: Key) -> str:
    """A key's numeric range as text (``> 0``, ``0 to 1``), empty when unbounded."""
    low = (f"{key.minimum:g}" if key.minimum is not None else
           f"> {key.above:g}" if key.above is not None else "")
    if key.maximum is None:
        return low if low.startswith(">") else f">= {low}" if low else ""
    if not low:
        return f"<= {key.maximum:g}"
    return f"{low}, <= {key.maximum:g}" if low.startswith(">") else f"{low} to {key.maximum:g}"
