"""Offline Winoground- and MMVP-style pairs: two emoji whose names differ by one attribute word.

Built deterministically from the emoji metadata. Two names (Unicode names with skin tones,
tokenised on spaces, colons and commas) make a pair when they differ in exactly one word
("man farmer" / "woman farmer", "... light skin tone" / "... dark skin tone") or when one is the
other plus one word ("cat face with tears of joy" / "face with tears of joy"). Tags say which:
``skin tone``, ``gender``, ``swapped word``, ``added word``; at most ``per_tag`` pairs per tag are
kept, chosen by a seeded shuffle. Both emoji come from the requested split, so the default
``test`` pairs never show the trained model an image it was trained on.

``names`` style (Winoground) captions are the names; ``statements`` style (MMVP-VLM) captions
are the descriptive rewritten sentences, prefixed "a photo of " as MMVP-VLM's evaluation does.
"""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import defaultdict
from pathlib import Path

from vlalign.data.benchmarks.base import PairItem
from vlalign.data.emoji import TONES, Emoji, EmojiEntry
from vlalign.errors import UserError

STYLES = ("names", "statements")
TAGS = ("skin tone", "gender", "swapped word", "added word")
GENDER_WORDS = {"man", "woman", "person", "men", "women", "people", "boy", "girl", "male",
                "female"}
TONE_WORDS = set(TONES.values())
MMVP_PREFIX = "a photo of "


def _words(entry: EmojiEntry) -> tuple[str, ...]:
    return tuple(entry.raw_caption.replace(":", " ").replace(",", " ").split())


def _tag(a: tuple[str, ...], b: tuple[str, ...]) -> str | None:
    """The pair's tag if the two word sequences differ by one attribute word, else None."""
    if len(a) == len(b):
        diff = [(x, y) for x, y in zip(a, b) if x != y]
        if len(diff) != 1:
            return None
        x, y = diff[0]
        if x in TONE_WORDS and y in TONE_WORDS:
            return "skin tone"
        return "gender" if x in GENDER_WORDS and y in GENDER_WORDS else "swapped word"
    short, long = (a, b) if len(a) < len(b) else (b, a)
    if len(long) == len(short) + 1 and short in (long[1:], long[:-1]):
        return "added word"
    return None


def find_pairs(entries: list[EmojiEntry]) -> dict[str, list[tuple[int, int]]]:
    """Every (i, j) pair of entries, i < j, per tag; both captions of the two must differ."""
    words = [_words(e) for e in entries]
    by_length: dict[int, list[int]] = defaultdict(list)
    for index, w in enumerate(words):
        by_length[len(w)].append(index)
    pairs: dict[str, list[tuple[int, int]]] = {tag: [] for tag in TAGS}
    for length, indices in sorted(by_length.items()):
        candidates = itertools.chain(itertools.combinations(indices, 2),
                                     itertools.product(indices, by_length.get(length + 1, [])))
        for i, j in candidates:
            tag = _tag(words[i], words[j])
            if tag and entries[i].rewritten_caption != entries[j].rewritten_caption:
                pairs[tag].append((min(i, j), max(i, j)))
    return {tag: sorted(found) for tag, found in pairs.items()}


class EmojiPairs:
    """A PairSet of emoji pairs differing by one attribute word (see the module docstring)."""

    def __init__(self, root: str | Path, split: str = "test", style: str = "names",
                 per_tag: int = 100, seed: int = 0) -> None:
        if style not in STYLES:
            raise UserError(f"unknown emoji pair style {style!r}; valid: {', '.join(STYLES)}")
        self.emoji = Emoji(root, split)
        self.style = style
        self.name = f"emoji-{'pairs' if style == 'names' else 'mmvp'}:{split}"
        found = find_pairs(self.emoji.entries)
        self.items: list[tuple[int, int, str]] = []
        for tag in TAGS:
            chosen = list(found[tag])
            random.Random(f"{seed}:{tag}").shuffle(chosen)
            self.items += [(i, j, tag) for i, j in sorted(chosen[:per_tag])]
        if not self.items:
            raise UserError(f"no emoji pairs in split {split!r}")
        self.fingerprint = hashlib.sha1(
            f"{self.emoji.fingerprint}:{style}:{per_tag}:{seed}".encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.items)

    def caption(self, entry: EmojiEntry) -> str:
        """The name (Winoground style) or the prefixed descriptive sentence (MMVP style)."""
        if self.style == "names":
            return entry.raw_caption
        return MMVP_PREFIX + entry.rewritten_caption

    def load(self, index: int) -> PairItem:
        """Pair ``index``: both emoji images and captions, and the differing attribute's tag."""
        i, j, tag = self.items[index]
        first, second = self.emoji.entry(i), self.emoji.entry(j)
        return PairItem(key=f"{first.unified}|{second.unified}",
                        images=(self.emoji.load(i).image, self.emoji.load(j).image),
                        captions=(self.caption(first), self.caption(second)), tag=tag)
