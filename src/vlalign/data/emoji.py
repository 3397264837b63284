"""Noto emoji (npm emoji-datasource-google): one image-caption pair per image, skin tones too."""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from vlalign.data.base import RAW, REWRITTEN, Example
from vlalign.data.images import decode_image
from vlalign.data.templates import article
from vlalign.errors import DataError, UserError

# Unicode's category order; labels index this list.
CATEGORIES = ["Smileys & Emotion", "People & Body", "Component", "Animals & Nature",
              "Food & Drink", "Travel & Places", "Activities", "Objects", "Symbols", "Flags"]
TONES = {"1F3FB": "light", "1F3FC": "medium-light", "1F3FD": "medium",
         "1F3FE": "medium-dark", "1F3FF": "dark"}
SPLITS = ("train", "test", "all")
TRAIN_PERCENT = 80
IMAGE_DIR = Path("img") / "64"
# Short names that are codes ("flag-va", "kr"), not words: the Unicode name is used instead.
_CODE_NAME = re.compile(r"^(flag[-_]\w{2}|\w{1,2})$")


@dataclass(frozen=True)
class EmojiEntry:
    """Metadata of one emoji image; ``base`` is the unified code of the emoji without skin tone."""

    base: str
    unified: str
    image: str
    name: str
    short_names: tuple[str, ...]
    category: str
    subcategory: str
    tones: tuple[str, ...] = ()

    def tone_text(self, separator: str = ", ") -> str:
        """The distinct skin tones in words ("light skin tone, dark skin tone"), or ""."""
        return separator.join(f"{tone} skin tone" for tone in dict.fromkeys(self.tones))

    @property
    def raw_caption(self) -> str:
        """The Unicode name, lowercased, tones CLDR-style ("father christmas: medium skin tone")."""
        name = self.name.lower()
        if not self.tones:
            return name
        return f"{name}{', ' if ':' in name else ': '}{self.tone_text()}"

    @property
    def rewritten_caption(self) -> str:
        """A sentence from the short names, subcategory and category."""
        names = [n.replace("_", " ").replace("-", " ") for n in self.short_names
                 if not _CODE_NAME.match(n)] or [self.name.lower()]
        subject = " or ".join(dict.fromkeys(names))
        tone = f" with {self.tone_text(' and ')}" if self.tones else ""
        group = self.subcategory.replace("-", " ")
        return (f"{article(subject)} {subject} emoji{tone}, from the {group} group "
                f"in the {self.category.lower()} category.")


def in_train_split(base: str) -> bool:
    """Deterministic ~80/20 split by base emoji, so skin-tone variants never straddle it."""
    return int(hashlib.sha1(base.encode()).hexdigest()[:8], 16) % 100 < TRAIN_PERCENT


def read_entries(metadata: Path) -> list[EmojiEntry]:
    """Every emoji image with a Google rendering: base entries then their skin variations."""
    try:
        records = json.loads(metadata.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise DataError(f"cannot read emoji metadata {metadata}: {error}") from None
    entries = []
    for record in sorted(records, key=lambda r: r.get("sort_order", 0)):
        if record.get("category") not in CATEGORIES:
            raise DataError(f"{metadata}: unknown emoji category {record.get('category')!r}")
        common = dict(base=record["unified"], name=record["name"],
                      short_names=tuple(record.get("short_names") or ()),
                      category=record["category"], subcategory=record["subcategory"])
        if record.get("has_img_google"):
            entries.append(EmojiEntry(unified=record["unified"], image=record["image"], **common))
        for key, variant in sorted((record.get("skin_variations") or {}).items()):
            if variant.get("has_img_google"):
                tones = tuple(TONES[code] for code in key.split("-"))
                entries.append(EmojiEntry(unified=variant["unified"], image=variant["image"],
                                          tones=tones, **common))
    return entries


class Emoji:
    """Noto emoji images with their names as captions; labels are the 10 Unicode categories."""

    class_names = [c.lower() for c in CATEGORIES]

    def __init__(self, root: str | os.PathLike[str], split: str = "train") -> None:
        if split not in SPLITS:
            raise UserError(f"unknown emoji split {split!r}; valid: {', '.join(SPLITS)}")
        self.root = Path(root)
        self.split = split
        self.name = f"emoji:{split}"
        self.metadata = self.root / "emoji.json"
        if not self.metadata.is_file() or not (self.root / IMAGE_DIR).is_dir():
            raise UserError(f"emoji data not found under {self.root} (expected emoji.json and "
                            f"{IMAGE_DIR}/; run `make install`)")
        entries = read_entries(self.metadata)
        if split != "all":
            entries = [e for e in entries if in_train_split(e.base) == (split == "train")]
        self.entries = entries

    @cached_property
    def fingerprint(self) -> str:
        """SHA-1 of the metadata file, the split and every listed image's size."""
        digest = hashlib.sha1(f"{self.name}\n".encode())
        digest.update(self.metadata.read_bytes())
        for entry in self.entries:
            path = self.root / IMAGE_DIR / entry.image
            size = path.stat().st_size if path.exists() else -1
            digest.update(f"{entry.image}:{size}\n".encode())
        return digest.hexdigest()

    def __len__(self) -> int:
        return len(self.entries)

    def entry(self, index: int) -> EmojiEntry:
        """Metadata (names, category, subcategory, base emoji, tones) of item ``index``."""
        return self.entries[index]

    def load(self, index: int) -> Example:
        """Item ``index``: the 64-px image on white, its name and a descriptive sentence."""
        entry = self.entries[index]
        image = decode_image(self.root / IMAGE_DIR / entry.image)
        return Example(key=entry.unified, image=image,
                       captions={RAW: entry.raw_caption, REWRITTEN: entry.rewritten_caption},
                       label=CATEGORIES.index(entry.category))
