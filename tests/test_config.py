"""Config loading: defaults <- YAML <- dotted overrides, with one-line errors."""

import pytest

from vlalign.config import load_config
from vlalign.errors import UserError
from vlalign.sail.config import SailConfig


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text("batch_size: 64\noptim: {lr: 0.001}\nvision_head: {kind: linear}\n")
    config = load_config(SailConfig, path, ["optim.lr=2e-4", "positives=[raw]"])
    assert config.batch_size == 64
    assert config.optim.lr == pytest.approx(2e-4)
    assert config.optim.name == "lion"  # default kept
    assert config.vision_head.kind == "linear"
    assert config.positives == ["raw"]


@pytest.mark.parametrize(
    ("text", "overrides", "message"),
    [
        ("batch_size: many\n", [], "batch_size: expected int"),
        ("optim: {lrr: 1}\n", [], "unknown key optim.lrr"),
        ("- a list\n", [], "expected a mapping"),
        ("batch_size: [1\n", [], "not valid YAML"),
        ("", ["novalue"], "expected key=value"),
    ],
)
def test_config_errors_are_one_line(tmp_path, text, overrides, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(UserError, match=message) as info:
        load_config(SailConfig, path, overrides)
    assert "\n" not in str(info.value)


def test_shipped_recipes_load():
    paper = load_config(SailConfig, "configs/sail-paper.yaml")
    assert (paper.batch_size, paper.optim.name, paper.optim.lr) == (32768, "lion", 1e-5)
    assert paper.vision_head.width_factor == 8 and paper.embed_dim == 1024
    assert paper.vision_head.init == paper.text_head.init == "xavier"  # the official init
    load_config(SailConfig, "configs/sail-offline.yaml")
