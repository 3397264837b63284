"""One grammar for the spec strings that name backbones, teachers, datasets and benchmarks.

``scheme:name[@stage][?key=value&key=value][[start:stop]]``, for example
``bundled:mobilenetv2@stage3?weights=random``, ``fashion-mnist:train[:5000]``,
``emoji-pairs:test?per_tag=100``, ``wds:shard-{000..009}.tar``, ``csv:/path/with:colon.csv``.

Each registry declares a ``Grammar``: its schemes and which optional parts its specs have. A part
a grammar lacks is not parsed, so its characters stay in the name: dataset paths may hold ``@``
and ``?`` (webdataset globs), and a backbone folder may end in brackets. The name runs from the
first ``:`` to the stage, options or slice, so it may hold more colons (paths, ``hf-hub:`` ids).
The scheme is matched case-insensitively; surrounding whitespace of every part is dropped.
``validate_options`` checks and types the options against ``Option`` declarations.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from vlalign.errors import UserError

# A trailing [start:stop] with optional, possibly negative, integer bounds.
_SLICE = re.compile(r"\[\s*(-?\d+)?\s*:\s*(-?\d+)?\s*\]$")
_INTEGER = re.compile(r"[+-]?\d+")
_TRUE = ("1", "true", "yes")
_FALSE = ("0", "false", "no")

Bounds = tuple[int | None, int | None]
Value = str | int | bool


@dataclass(frozen=True)
class Spec:
    """A parsed spec; ``str()`` gives it back in canonical form (what messages quote)."""

    scheme: str
    name: str
    stage: str | None = None
    options: dict[str, str] = field(default_factory=dict)
    slice: Bounds | None = None

    def __str__(self) -> str:
        """``scheme:name[@stage][?k=v&...][[start:stop]]``, options in the order given."""
        text = f"{self.scheme}:{self.name}" + (f"@{self.stage}" if self.stage else "")
        if self.options:
            text += "?" + "&".join(f"{k}={v}" for k, v in self.options.items())
        if self.slice is not None:
            text += "[{}:{}]".format(*("" if b is None else b for b in self.slice))
        return text


@dataclass(frozen=True)
class Grammar:
    """The specs one registry accepts: its schemes and which optional parts follow the name.

    ``noun`` is what a scheme is called in messages ("scheme" for backbones, "dataset" for data,
    whose schemes are dataset names); ``usage`` says what the name is per scheme ("train|test",
    "PATH"; default "NAME"), for the message about a missing name.
    """

    noun: str
    schemes: tuple[str, ...]
    stage: bool = False
    options: bool = False
    slice: bool = False
    usage: Mapping[str, str] = field(default_factory=dict, compare=False)

    def scheme(self, text: str) -> str:
        """The spec's scheme, lower-cased; a UserError listing the valid ones if unknown."""
        return self._split(text)[0]

    def parse(self, text: str) -> Spec:
        """Split a spec into its parts; a one-line UserError if it does not fit the grammar."""
        scheme, rest, bounds = self._split(text)
        query = ""
        if self.options:
            rest, _, query = rest.partition("?")
        stage = ""
        if self.stage:
            rest, _, stage = rest.partition("@")
        name = rest.strip()
        if not name:
            raise UserError(f"spec {text!r} needs {scheme}:{self.usage.get(scheme, 'NAME')}")
        return Spec(scheme=scheme, name=name, stage=stage.strip() or None,
                    options=_parse_options(text, query), slice=bounds)

    def _split(self, text: str) -> tuple[str, str, Bounds | None]:
        """(scheme, text between ``:`` and the slice, slice bounds or None)."""
        if not isinstance(text, str):
            raise UserError(f"a spec must be a string, not {type(text).__name__}")
        base, bounds = text.strip(), None
        match = _SLICE.search(base) if self.slice else None
        if match:
            base = base[: match.start()]
            bounds = tuple(None if b is None else int(b) for b in match.groups())
        scheme, _, rest = base.partition(":")
        scheme = scheme.strip().lower()
        if scheme not in self.schemes:
            raise UserError(f"unknown {self.noun} {scheme!r} in spec {text!r}; "
                            f"valid: {', '.join(self.schemes)}")
        return scheme, rest, bounds


def _parse_options(text: str, query: str) -> dict[str, str]:
    """``key=value&key=value`` -> dict (empty parts skipped); a UserError when malformed."""
    options: dict[str, str] = {}
    for part in query.split("&"):
        if not part.strip():
            continue
        key, equals, value = (s.strip() for s in part.partition("="))
        if not equals or not key or not value:
            raise UserError(f"bad option {part!r} in spec {text!r}; expected KEY=VALUE")
        if key in options:
            raise UserError(f"option {key!r} given twice in spec {text!r}")
        options[key] = value
    return options


@dataclass(frozen=True)
class Option:
    """An option a spec may carry: its default (whose type, str, int or bool, values take), the
    values a str option may take (any when empty) and the smallest int allowed (None: any)."""

    default: Value
    choices: tuple[str, ...] = ()
    minimum: int | None = None


def validate_options(spec: Spec, declared: Mapping[str, Option]) -> dict[str, Value]:
    """Every declared option, typed: the spec's value or the default; unknown or bad values are
    a one-line UserError naming the spec, the option and what is valid."""
    unknown = [key for key in spec.options if key not in declared]
    if unknown:
        raise UserError(f"unknown option {', '.join(map(repr, unknown))} for {spec.scheme} in "
                        f"spec {str(spec)!r}; valid: {', '.join(sorted(declared)) or 'none'}")
    values = {key: option.default for key, option in declared.items()}
    for key, text in spec.options.items():
        values[key] = _typed(spec, key, text, declared[key])
    return values


def _typed(spec: Spec, key: str, text: str, option: Option) -> Value:
    """One option's value as its declared type, or a UserError saying what it must be."""
    if isinstance(option.default, bool):
        if text.lower() in _TRUE + _FALSE:
            return text.lower() in _TRUE
        wanted = f"a boolean ({', '.join(_TRUE + _FALSE)})"
    elif isinstance(option.default, int):
        floor = option.minimum
        if _INTEGER.fullmatch(text) and (floor is None or int(text) >= floor):
            return int(text)
        wanted = "an integer" + ("" if floor is None else f" >= {floor}")
    elif not option.choices or text in option.choices:
        return text
    else:
        wanted = f"one of {', '.join(option.choices)}"
    raise UserError(f"option {key}={text!r} of {spec.scheme} must be {wanted} "
                    f"(spec {str(spec)!r})")
