"""Property tests: any YAML recipe plus any --set overrides loads into a well-typed config or
fails with a one-line UserError; a loaded value is never silently coerced to something else."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from vlalign.config import load_config
from vlalign.errors import UserError
from vlalign.sail.config import SailConfig

KEYS = ["batch_size", "epochs", "optim", "optim.lr", "optim.name", "vision_head",
        "vision_head.kind", "vision_head.width_factor", "positives", "train_stores", "seed",
        "verify_stores", "precision", "nope", "optim.nope", "batch_size.x", ""]
scalars = (st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats()
           | st.text(max_size=12) | st.sampled_from(["1e-3", "true", "no", "[raw]", "{a: 1}"]))
documents = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
    st.sampled_from([k.split(".")[-1] for k in KEYS if k]) | st.text(max_size=6) | st.integers(),
    inner, max_size=4), max_leaves=12)
overrides = st.lists(st.builds(lambda key, sep, value: f"{key}{sep}{value}",
                               st.sampled_from(KEYS) | st.text(max_size=8),
                               st.sampled_from(["=", "", "=="]),
                               st.text(max_size=10) | scalars.map(str)), max_size=3)


@pytest.fixture(scope="module")
def recipe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("config") / "recipe.yaml"


def _well_typed(config: object, cls: type) -> None:
    """Every field holds a value of its annotated type (recursively)."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        value, kind = getattr(config, field.name), hints[field.name]
        if dataclasses.is_dataclass(kind):
            _well_typed(value, kind)
        elif typing.get_origin(kind) is list:
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), field
        else:
            assert type(value) is kind, (field.name, value)


def _check(path: Path | None, sets: list[str]) -> None:
    try:
        config = load_config(SailConfig, path, sets)
    except UserError as error:
        assert str(error) and "\n" not in str(error)
        return
    _well_typed(config, SailConfig)


@given(document=documents, sets=overrides)
def test_yaml_documents_load_or_fail_in_one_line(recipe: Path, document: object,
                                                 sets: list[str]) -> None:
    recipe.write_text(yaml.safe_dump(document))
    _check(recipe, sets)


@given(data=st.binary(max_size=300) | st.text(max_size=200).map(str.encode), sets=overrides)
def test_arbitrary_files_load_or_fail_in_one_line(recipe: Path, data: bytes,
                                                  sets: list[str]) -> None:
    recipe.write_bytes(data)
    _check(recipe, sets)


@given(value=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**6, 10**6))
def test_integers_are_never_silently_truncated(value: float) -> None:
    try:
        config = load_config(SailConfig, None, [f"batch_size={value!r}"])
    except UserError as error:  # a fraction, or a whole number below batch_size's minimum 1
        assert value != int(value) or (value < 1 and "must be at least 1" in str(error))
        return
    assert config.batch_size == value
