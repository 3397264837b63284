"""The offline evaluation sets built from the emoji assets: pairs and segmentation canvases."""

from pathlib import Path

import numpy as np
import pytest

from vlalign.data.benchmarks.base import IGNORE_INDEX, dataset_kind
from vlalign.data.benchmarks.emoji_canvas import EmojiCanvases
from vlalign.data.benchmarks.emoji_pairs import TAGS, EmojiPairs, _tag
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.data.emoji import Emoji
from vlalign.errors import UserError

EMOJI = Path("data") / "emoji"
pytestmark = pytest.mark.skipif(not (EMOJI / "emoji.json").is_file(),
                                reason="emoji data not installed (make install)")


def test_pair_tags_name_the_one_word_difference() -> None:
    assert _tag(("man", "farmer"), ("woman", "farmer")) == "gender"
    assert _tag(("waving", "hand", "light", "skin", "tone"),
                ("waving", "hand", "dark", "skin", "tone")) == "skin tone"
    assert _tag(("face", "with", "tears"), ("cat", "face", "with", "tears")) == "added word"
    assert _tag(("woman", "artist"), ("woman", "vampire")) == "swapped word"
    assert _tag(("man", "farmer"), ("woman", "cook")) is None  # two words differ
    assert _tag(("cat",), ("cat", "face", "smiling")) is None  # two words added


def test_emoji_pairs_are_deterministic_test_only_and_differ() -> None:
    pairs = EmojiPairs(EMOJI, "test")
    again = EmojiPairs(EMOJI, "test")
    assert pairs.items == again.items and pairs.fingerprint == again.fingerprint
    assert {tag for *_, tag in pairs.items} == set(TAGS)
    assert all(sum(t == tag for *_, t in pairs.items) <= 100 for tag in TAGS)
    train_bases = {e.base for e in Emoji(EMOJI, "train").entries}
    for index in range(0, len(pairs), 37):
        item = pairs.load(index)
        assert item.captions[0] != item.captions[1]
        first, second = item.key.split("|")
        assert not {first, second} & {e.unified for e in Emoji(EMOJI, "train").entries}
        assert item.images[0].size == item.images[1].size == (64, 64)
    assert not any(pairs.emoji.entry(i).base in train_bases for i, _, _ in pairs.items)
    other = EmojiPairs(EMOJI, "test", seed=1)
    assert other.items != pairs.items and other.fingerprint != pairs.fingerprint


def test_emoji_mmvp_statements_share_the_pairs() -> None:
    names = create_benchmark("emoji-pairs:test?per_tag=5")
    statements = create_benchmark("emoji-mmvp:test?per_tag=5")
    assert names.items == statements.items and len(names) <= 20
    item = statements.load(0)
    assert all(c.startswith("a photo of ") and c.endswith(".") for c in item.captions)
    assert dataset_kind(names) == "pairs"
    with pytest.raises(UserError, match="per_tag='x' of emoji-pairs must be an integer"):
        create_benchmark("emoji-pairs:test?per_tag=x")
    with pytest.raises(UserError, match="unknown option 'bogus' for emoji-mmvp"):
        create_benchmark("emoji-mmvp:test?bogus=1")


def test_canvases_are_deterministic_with_exact_masks() -> None:
    canvases = EmojiCanvases(EMOJI, "test", count=6, seed=3)
    assert len(canvases.class_names) == 20 and dataset_kind(canvases) == "segmentation"
    first, again = canvases.load(2), EmojiCanvases(EMOJI, "test", count=6, seed=3).load(2)
    assert np.array_equal(np.asarray(first.image), np.asarray(again.image))
    assert np.array_equal(first.mask, again.mask)
    assert first.mask.shape == (224, 224) and first.image.size == (224, 224)
    labels = set(np.unique(first.mask).tolist()) - {IGNORE_INDEX}
    assert 1 <= len(labels) <= 4 and labels <= set(range(20))
    assert (first.mask == IGNORE_INDEX).mean() > 0.3  # background is ignored, not a class
    other = EmojiCanvases(EMOJI, "test", count=6, seed=4).load(2)
    assert not np.array_equal(first.mask, other.mask)
    with pytest.raises(IndexError):
        canvases.load(6)


def test_canvas_mask_follows_the_pasted_alpha() -> None:
    """On a plain canvas, ignored pixels keep the background colour (but for the blended rims
    of the sprites) and labelled pixels do not."""
    canvases = EmojiCanvases(EMOJI, "test", count=40)
    plain = 0
    for index in range(40):
        item = canvases.load(index)
        pixels = np.asarray(item.image).reshape(-1, 3)
        ignored = pixels[item.mask.reshape(-1) == IGNORE_INDEX]
        colours, counts = np.unique(ignored, axis=0, return_counts=True)
        if counts.max() < 0.9 * len(ignored):
            continue  # a noise background
        plain += 1
        background = colours[counts.argmax()]
        labelled = pixels[item.mask.reshape(-1) != IGNORE_INDEX]
        assert (labelled != background).any(axis=1).mean() > 0.95
    assert 5 <= plain <= 35  # about half of the canvases are plain


def test_canvas_subcategory_classes() -> None:
    canvases = create_benchmark("emoji-canvas:test?by=subcategory&count=3")
    assert "animal mammal" in canvases.class_names and len(canvases) == 3
    assert canvases.class_names == sorted(canvases.class_names)
    with pytest.raises(UserError, match="grouping 'colour'"):
        create_benchmark("emoji-canvas:test?by=colour")
