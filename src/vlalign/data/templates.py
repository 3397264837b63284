"""Caption templates for class names: training captions and zero-shot classifier prompts."""

from __future__ import annotations

import re

GENERIC_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of the {}.",
    "a good photo of the {}.",
]

FASHION_TEMPLATES = [
    "a photo of a {}.",
    "a black and white photo of a {}.",
    "a low resolution photo of a {}.",
    "a grayscale photo of a {}.",
    "a blurry photo of a {}.",
    "a pixelated photo of a {}.",
    "a photo of the {}.",
    "a small photo of a {}, an item of clothing.",
]

DIGIT_TEMPLATES = [
    'a photo of the number: "{}".',
    "a photo of the digit {}.",
    "a low resolution image of the number {}.",
    "a pixelated drawing of the digit {}.",
    "a handwritten {}.",
]

EMOJI_TEMPLATES = [
    "an emoji from the {} category.",
    "an emoji of {}.",
    "a {} emoji.",
    "an icon from the {} category.",
    "a small picture of {}.",
]

# For emoji named by what they show (segmentation canvases), not by category.
EMOJI_OBJECT_TEMPLATES = [
    "an emoji of {}.",
    "a {} emoji.",
    "a small picture of {}.",
    "an icon of {}.",
]

# The 80 prompts OpenAI used for CLIP's ImageNet zero-shot classifier, in their published order.
IMAGENET_TEMPLATES = [
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "a photo of a {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
]

_A_BEFORE_WORD = re.compile(r"(^|\s)a (\w+)")
# Vowel letters that sound like a consonant ("a unicorn", "a one-piece", "a ukraine flag").
_CONSONANT_SOUND = re.compile(r"(u[bcdfghjklmnpqrstvwxz][aeiou]|uk|eu|one\b)", re.IGNORECASE)

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


def format_prompt(template: str, class_name: str) -> str:
    """Fill a template with a class name and fix its "a" ("a photo of an ankle boot.")."""
    text = template.format(class_name)
    return _A_BEFORE_WORD.sub(lambda m: f"{m[1]}{article(m[2])} {m[2]}", text)


def class_captions(templates: list[str], class_name: str, index: int) -> tuple[str, str]:
    """The (RAW, REWRITTEN) captions of item ``index``: the first template and a different one.

    The second template is picked by a fixed multiplicative hash of the index, so it is the same
    in every run and process, and varies across items.
    """
    other = 1 + (index * 2654435761 % 2**32) % (len(templates) - 1)
    return format_prompt(templates[0], class_name), format_prompt(templates[other], class_name)
