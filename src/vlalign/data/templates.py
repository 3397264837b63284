"""Prompt templates for class names: zero-shot classifier prompts and training captions.

A template is a ``str.format`` pattern with ``{c}`` for the class name, the way CLIP_benchmark
writes its templates (``clip_benchmark/datasets/en_zeroshot_classification_templates.json``;
open_clip's ``zero_shot_metadata`` holds the same text as lambdas). ``format_prompt`` fills it
with ``template.format(c=name)``, so a published set (``IMAGENET_TEMPLATES``) comes out verbatim:
"a origami {c}." gives "a origami goldfish.", as in CLIP and CLIP_benchmark.

vlalign's own sets (the Fashion-MNIST, digits, emoji and generic ones, which also make the
training captions of those datasets) may write ``{a}`` for the indefinite article that fits the
class name: "a photo of {a} {c}." gives "a photo of an ankle boot.". Published templates never
contain ``{a}``. A bare ``{}`` (the older style, and what users often pass) is the class name too.
"""

from __future__ import annotations

import re
import string

from vlalign.errors import UserError

GENERIC_TEMPLATES = [
    "a photo of {a} {c}.",
    "a picture of {a} {c}.",
    "an image of {a} {c}.",
    "a close-up photo of {a} {c}.",
    "a cropped photo of the {c}.",
    "a good photo of the {c}.",
]

FASHION_TEMPLATES = [
    "a photo of {a} {c}.",
    "a black and white photo of {a} {c}.",
    "a low resolution photo of {a} {c}.",
    "a grayscale photo of {a} {c}.",
    "a blurry photo of {a} {c}.",
    "a pixelated photo of {a} {c}.",
    "a photo of the {c}.",
    "a small photo of {a} {c}, an item of clothing.",
]

DIGIT_TEMPLATES = [
    'a photo of the number: "{c}".',
    "a photo of the digit {c}.",
    "a low resolution image of the number {c}.",
    "a pixelated drawing of the digit {c}.",
    "a handwritten {c}.",
]

EMOJI_TEMPLATES = [
    "an emoji from the {c} category.",
    "an emoji of {c}.",
    "{a} {c} emoji.",
    "an icon from the {c} category.",
    "a small picture of {c}.",
]

# For emoji named by what they show (segmentation canvases), not by category.
EMOJI_OBJECT_TEMPLATES = [
    "an emoji of {c}.",
    "{a} {c} emoji.",
    "a small picture of {c}.",
    "an icon of {c}.",
]

# The 80 prompts OpenAI used for CLIP's ImageNet zero-shot classifier, in their published order
# and words (open_clip's OPENAI_IMAGENET_TEMPLATES, CLIP_benchmark's "imagenet1k" templates),
# "a origami" and "a embroidered" included: published sets are applied verbatim.
IMAGENET_TEMPLATES = [
    "a bad photo of a {c}.",
    "a photo of many {c}.",
    "a sculpture of a {c}.",
    "a photo of the hard to see {c}.",
    "a low resolution photo of the {c}.",
    "a rendering of a {c}.",
    "graffiti of a {c}.",
    "a bad photo of the {c}.",
    "a cropped photo of the {c}.",
    "a tattoo of a {c}.",
    "the embroidered {c}.",
    "a photo of a hard to see {c}.",
    "a bright photo of a {c}.",
    "a photo of a clean {c}.",
    "a photo of a dirty {c}.",
    "a dark photo of the {c}.",
    "a drawing of a {c}.",
    "a photo of my {c}.",
    "the plastic {c}.",
    "a photo of the cool {c}.",
    "a close-up photo of a {c}.",
    "a black and white photo of the {c}.",
    "a painting of the {c}.",
    "a painting of a {c}.",
    "a pixelated photo of the {c}.",
    "a sculpture of the {c}.",
    "a bright photo of the {c}.",
    "a cropped photo of a {c}.",
    "a plastic {c}.",
    "a photo of the dirty {c}.",
    "a jpeg corrupted photo of a {c}.",
    "a blurry photo of the {c}.",
    "a photo of the {c}.",
    "a good photo of the {c}.",
    "a rendering of the {c}.",
    "a {c} in a video game.",
    "a photo of one {c}.",
    "a doodle of a {c}.",
    "a close-up photo of the {c}.",
    "a photo of a {c}.",
    "the origami {c}.",
    "the {c} in a video game.",
    "a sketch of a {c}.",
    "a doodle of the {c}.",
    "a origami {c}.",
    "a low resolution photo of a {c}.",
    "the toy {c}.",
    "a rendition of the {c}.",
    "a photo of the clean {c}.",
    "a photo of a large {c}.",
    "a rendition of a {c}.",
    "a photo of a nice {c}.",
    "a photo of a weird {c}.",
    "a blurry photo of a {c}.",
    "a cartoon {c}.",
    "art of a {c}.",
    "a sketch of the {c}.",
    "a embroidered {c}.",
    "a pixelated photo of a {c}.",
    "itap of the {c}.",
    "a jpeg corrupted photo of the {c}.",
    "a good photo of a {c}.",
    "a plushie {c}.",
    "a photo of the nice {c}.",
    "a photo of the small {c}.",
    "a photo of the weird {c}.",
    "the cartoon {c}.",
    "art of the {c}.",
    "a drawing of the {c}.",
    "a photo of the large {c}.",
    "a black and white photo of a {c}.",
    "the plushie {c}.",
    "a dark photo of a {c}.",
    "itap of a {c}.",
    "graffiti of the {c}.",
    "a toy {c}.",
    "itap of my {c}.",
    "a photo of a cool {c}.",
    "a photo of a small {c}.",
    "a tattoo of the {c}.",
]

# Vowel letters that sound like a consonant ("a unicorn", "a one-piece", "a ukraine flag").
_CONSONANT_SOUND = re.compile(r"(u[bcdfghjklmnpqrstvwxz][aeiou]|uk|eu|one\b)", re.IGNORECASE)
_FIELDS = {"c", "a", "", "0"}  # {c} or {} / {0}: the class name; {a}: its article

_BY_DATASET = {
    "fashion-mnist": FASHION_TEMPLATES,
    "digits": DIGIT_TEMPLATES,
    "emoji": EMOJI_TEMPLATES,
    "emoji-canvas": EMOJI_OBJECT_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
}


def templates_for(dataset_name: str) -> list[str]:
    """Zero-shot prompt templates for a dataset name or spec ("fashion-mnist:test[:500]" works)."""
    key = dataset_name.split(":", 1)[0].strip().lower()
    return list(_BY_DATASET.get(key, GENERIC_TEMPLATES))


def article(phrase: str) -> str:
    """The indefinite article for a phrase: "an" before a vowel sound, else "a"."""
    vowel = phrase[:1].lower() in "aeiou" and not _CONSONANT_SOUND.match(phrase)
    return "an" if vowel else "a"


def _check(template: str) -> None:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        fields = {f"<{error}>"}
    if not fields & {"c", "", "0"} or fields - _FIELDS:
        raise UserError(f"bad prompt template {template!r}: expected {{c}} for the class name "
                        f"(and optionally {{a}} for its article), e.g. 'a photo of a {{c}}.'")


def format_prompt(template: str, class_name: str) -> str:
    """Fill a template: ``{c}`` (or ``{}``) is the class name, ``{a}`` its article; nothing else
    is changed, so a published template gives exactly ``template.format(c=class_name)``."""
    _check(template)
    return template.format(class_name, c=class_name, a=article(class_name))


def class_captions(templates: list[str], class_name: str, index: int) -> tuple[str, str]:
    """The (RAW, REWRITTEN) captions of item ``index``: the first template and a different one.

    The second template is picked by a fixed multiplicative hash of the index, so it is the same
    in every run and process, and varies across items.
    """
    other = 1 + (index * 2654435761 % 2**32) % (len(templates) - 1)
    return format_prompt(templates[0], class_name), format_prompt(templates[other], class_name)
