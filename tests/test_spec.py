"""The one spec grammar (``vlalign.spec``): parsing, canonical round-trips, slices, options."""

from __future__ import annotations

import pytest

from vlalign.backbones.registry import VISION
from vlalign.data.benchmarks.registry import GRAMMAR as BENCHMARKS
from vlalign.data.registry import GRAMMAR as DATA
from vlalign.errors import UserError
from vlalign.spec import Grammar, Option, Spec, validate_options

ALL = Grammar("scheme", ("bundled", "hf", "emoji-pairs"), stage=True, options=True, slice=True)


@pytest.mark.parametrize("grammar, text, expected", [
    (VISION, "bundled:mobilenetv2@stage3?weights=random",
     Spec("bundled", "mobilenetv2", "stage3", {"weights": "random"})),
    (VISION, "hf:/tmp/x?pool=cls", Spec("hf", "/tmp/x", options={"pool": "cls"})),
    (VISION, "open_clip:ViT-B-32//ckpts/model.pt", Spec("open_clip", "ViT-B-32//ckpts/model.pt")),
    (VISION, "timm:hf-hub:timm/vit_small", Spec("timm", "hf-hub:timm/vit_small")),
    (VISION, "hf:/models/run[1:2]", Spec("hf", "/models/run[1:2]")),  # no slices for backbones
    (DATA, "fashion-mnist:train[:5000]", Spec("fashion-mnist", "train", slice=(None, 5000))),
    (DATA, "digits:test[-7:]", Spec("digits", "test", slice=(-7, None))),
    (DATA, "digits:test[2:-1]", Spec("digits", "test", slice=(2, -1))),
    (DATA, "wds:shard-{000..009}.tar", Spec("wds", "shard-{000..009}.tar")),
    (DATA, "wds:/data/shard-??.tar", Spec("wds", "/data/shard-??.tar")),  # '?' is a glob here
    (DATA, "csv:/path/with:colon.csv", Spec("csv", "/path/with:colon.csv")),
    (DATA, "csv:/data/user@host/pairs.csv", Spec("csv", "/data/user@host/pairs.csv")),
    (DATA, "folder:/data/imgs[0:5][1:2]", Spec("folder", "/data/imgs[0:5]", slice=(1, 2))),
    (DATA, "csv:/data/[x]/pairs.csv", Spec("csv", "/data/[x]/pairs.csv")),
    (BENCHMARKS, "emoji-pairs:test?per_tag=100", Spec("emoji-pairs", "test",
                                                      options={"per_tag": "100"})),
    (BENCHMARKS, "voc:/data/VOCdevkit?split=train[:100]",
     Spec("voc", "/data/VOCdevkit", options={"split": "train"}, slice=(None, 100))),
    (ALL, "hf:/x@s?a=1&b=x=y[3:4]", Spec("hf", "/x", "s", {"a": "1", "b": "x=y"}, (3, 4))),
])
def test_parse_and_round_trip(grammar: Grammar, text: str, expected: Spec) -> None:
    spec = grammar.parse(text)
    assert spec == expected
    assert str(spec) == text
    assert grammar.parse(str(spec)) == spec


def test_whitespace_case_and_empty_parts_are_normalised() -> None:
    spec = ALL.parse("  BUNDLED: bow @ stage1 ? dim = 8 && bigrams=0 [ 1 : 3 ] ")
    assert spec == Spec("bundled", "bow", "stage1", {"dim": "8", "bigrams": "0"}, (1, 3))
    assert str(spec) == "bundled:bow@stage1?dim=8&bigrams=0[1:3]"
    assert ALL.parse("bundled:bow@?").stage is None and not ALL.parse("bundled:bow?").options
    assert DATA.scheme("Digits:test[1:2]") == "digits"


def test_a_slice_only_at_the_very_end() -> None:
    assert DATA.parse("folder:/imgs[0:5]x").slice is None
    assert DATA.parse("folder:/imgs[0:5]x").name == "/imgs[0:5]x"
    assert DATA.parse("digits:test[-:]").name == "test[-:]"  # not a slice: stays in the name
    assert DATA.parse("digits:test[:]").slice == (None, None)


@pytest.mark.parametrize("grammar, text, message", [
    (VISION, "nope:thing", "unknown scheme 'nope' in spec 'nope:thing'; "
                           "valid: bundled, hf, timm, open_clip"),
    (VISION, "bundled", "needs bundled:NAME"),
    (VISION, "bundled:@stage1", "needs bundled:NAME"),
    (DATA, "mnist:train", "unknown dataset 'mnist' .*valid: fashion-mnist, emoji"),
    (DATA, "emoji", "spec 'emoji' needs emoji:train|test|all"),
    (DATA, "csv:[1:2]", "needs csv:PATH"),
    (BENCHMARKS, "coco:", "needs coco:ROOT"),
    (BENCHMARKS, "cifar:test", "valid: .*imagenet, coco.*digits"),
    (VISION, "hf:/x?pool", "bad option 'pool' in spec 'hf:/x.pool'; expected KEY=VALUE"),
    (VISION, "hf:/x?=cls", "bad option '=cls'"),
    (VISION, "hf:/x?pool=", "bad option 'pool='"),
    (VISION, "hf:/x?a=1&a=2", "option 'a' given twice"),
    (VISION, "hf:/x\n?a", "expected KEY=VALUE"),
])
def test_parse_errors_are_one_line(grammar: Grammar, text: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        grammar.parse(text)
    assert "\n" not in str(caught.value)


def test_not_a_string_is_a_user_error() -> None:
    with pytest.raises(UserError, match="must be a string, not NoneType"):
        VISION.parse(None)  # type: ignore[arg-type]


DECLARED = {"pool": Option("avg", ("avg", "max", "avgmax")), "size": Option(224, minimum=1),
            "seed": Option(0), "remote_code": Option(False), "split": Option("test")}


def _values(text: str) -> dict:
    return validate_options(VISION.parse(text), DECLARED)


def test_options_are_typed_with_defaults() -> None:
    assert _values("hf:/x") == {"pool": "avg", "size": 224, "seed": 0, "remote_code": False,
                                "split": "test"}
    assert _values("hf:/x?pool=max&size=+64&seed=-3&remote_code=YES&split=val") == {
        "pool": "max", "size": 64, "seed": -3, "remote_code": True, "split": "val"}
    assert _values("hf:/x?remote_code=0")["remote_code"] is False
    assert validate_options(VISION.parse("hf:/x"), {}) == {}


@pytest.mark.parametrize("query, message", [
    ("colour=1", r"unknown option 'colour' for hf in spec 'hf:/x\?colour=1'; "
                 "valid: pool, remote_code, seed, size, split$"),
    ("a=1&size=2&b=3", "unknown option 'a', 'b' for hf"),
    ("pool=median", r"option pool='median' of hf must be one of avg, max, avgmax \(spec "),
    ("size=0", "option size='0' of hf must be an integer >= 1"),
    ("size=1.5", "option size='1.5' of hf must be an integer >= 1"),
    ("seed=x", "option seed='x' of hf must be an integer "),
    ("seed=3_0", "must be an integer"),
    ("remote_code=maybe", r"must be a boolean \(1, true, yes, 0, false, no\)"),
])
def test_bad_options_name_the_valid_ones(query: str, message: str) -> None:
    with pytest.raises(UserError, match=message) as caught:
        _values(f"hf:/x?{query}")
    assert "\n" not in str(caught.value) and "hf:/x?" in str(caught.value)


def test_no_options_declared_means_none_valid() -> None:
    with pytest.raises(UserError, match="valid: none"):
        validate_options(VISION.parse("hf:/x?a=1"), {})
