"""Configs are dataclasses: defaults in code, a YAML file on top, then dotted ``key=value``
overrides from the command line. The resolved config is saved with every run.

A field declared with ``setting(default, choices=..., minimum=...)`` is checked by ``validate``
(closed choices, lower bounds), which ``from_dict`` runs and every trainer runs again on the
config it is handed, so a bad value fails in a second with one line naming the key."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from vlalign.errors import UserError

T = TypeVar("T")


def _coerce(value: Any, kind: Any, where: str) -> Any:
    origin = typing.get_origin(kind)
    args = typing.get_args(kind)
    if dataclasses.is_dataclass(kind):
        if not isinstance(value, dict):
            raise UserError(f"config {where}: expected a mapping, got {value!r}")
        return from_dict(kind, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            value = [value]
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        if value is None and type(None) in args:
            return None
        for option in args:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, where)
            except UserError:
                continue
        raise UserError(f"config {where}: {value!r} does not fit {kind}")
    if kind is bool:
        if isinstance(value, bool):
            return value
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
        raise UserError(f"config {where}: expected true/false, got {value!r}")
    if kind in (int, float):
        return _number(value, kind, where)
    if kind is str:
        if value is None or isinstance(value, dict | list):
            raise UserError(f"config {where}: expected a string, got {value!r}")
        return str(value)
    return value


def _number(value: Any, kind: type, where: str) -> int | float:
    """An int or float from a number or numeric string; never a bool, never a truncation."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
        if kind is int:
            if not number.is_integer():
                raise ValueError
            number = int(value) if isinstance(value, int) else int(number)
    except (TypeError, ValueError, OverflowError):
        raise UserError(f"config {where}: expected {kind.__name__}, got {value!r}") from None
    return number


def setting(default: Any, *, choices: tuple[Any, ...] = (), minimum: float | None = None,
            above: float | None = None) -> Any:
    """A dataclass field with a default and the checks ``validate`` applies: a closed set of
    ``choices`` (for a list field, each element's), ``minimum <= value`` or ``above < value``."""
    checks = {"choices": tuple(choices), "minimum": minimum, "above": above}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=checks)
    return dataclasses.field(default=default, metadata=checks)


def _check(name: str, value: Any, checks: Any) -> None:
    choices = checks.get("choices") or ()
    for item in value if isinstance(value, list) else [value]:
        if choices and item not in choices:
            raise UserError(f"config {name}: {item!r} is not one of "
                            f"{', '.join(map(str, choices))}")
    minimum, above = checks.get("minimum"), checks.get("above")
    if minimum is not None and value < minimum:
        raise UserError(f"config {name}: must be at least {minimum}, got {value}")
    if above is not None and value <= above:
        raise UserError(f"config {name}: must be greater than {above}, got {value}")


def validate(config: Any, where: str = "") -> None:
    """UserError naming the first field of ``config`` (nested dataclasses included) whose value
    breaks its ``setting`` checks."""
    for spec in dataclasses.fields(config):
        name = f"{where}.{spec.name}" if where else spec.name
        value = getattr(config, spec.name)
        if dataclasses.is_dataclass(value):
            validate(value, name)
        else:
            _check(name, value, spec.metadata)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys are errors naming valid ones."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    if unknown:
        raise UserError(f"config: unknown key {where + '.' if where else ''}{unknown[0]}; "
                        f"valid: {', '.join(sorted(names))}")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    config = cls(**kwargs)
    if not where:
        validate(config)
    return config


def to_dict(config: Any) -> dict[str, Any]:
    """A plain nested dict of a dataclass config (for saving)."""
    return dataclasses.asdict(config)


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b=value`` strings (value parsed as YAML) to a nested dict, in place."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise UserError(f"bad override {item!r}: expected key=value, e.g. optim.lr=1e-4")
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"bad override {item!r}: {part} is not a section")
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError:
            node[parts[-1]] = raw
    return data


def load_config(cls: type[T], path: str | Path | None = None,
                overrides: list[str] | None = None, base: T | None = None) -> T:
    """Defaults of ``cls`` (or ``base``, an instance of it) <- YAML file <- dotted overrides."""
    data = to_dict(base if base is not None else cls())
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise UserError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
        except UnicodeDecodeError:
            raise UserError(f"{path}: not a UTF-8 text file") from None
        except yaml.YAMLError as error:
            raise UserError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise UserError(f"{path}: expected a mapping at the top level")
        _merge(data, loaded)
    apply_overrides(data, overrides or [])
    return from_dict(cls, data)


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value
