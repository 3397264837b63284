"""The evaluation protocol of CLIP, open_clip and CLIP_benchmark: published templates filled
verbatim, ImageNet's 80 templates and 1000 class names as open_clip ships them, acc5 only with
at least 5 classes, and COCO/Flickr30k retrieval over every caption of the Karpathy test split."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from vlalign.data.base import Example
from vlalign.data.benchmarks.imagenet import imagenet_class_names, imagenet_wnids
from vlalign.data.benchmarks.karpathy import KarpathyCaptions
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.data.templates import (
    DIGIT_TEMPLATES,
    EMOJI_OBJECT_TEMPLATES,
    EMOJI_TEMPLATES,
    FASHION_TEMPLATES,
    GENERIC_TEMPLATES,
    IMAGENET_TEMPLATES,
    format_prompt,
    templates_for,
)
from vlalign.errors import UserError
from vlalign.eval import tasks, zeroshot

pytestmark = pytest.mark.usefixtures("one_thread")
CTX = tasks.Context(progress=False)


def _open_clip_metadata():
    """open_clip's ``zero_shot_metadata`` read from its file: plain data, so the package (and
    torchvision) is not imported."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("open_clip_torch is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "zero_shot_metadata.py"
    module_spec = importlib.util.spec_from_file_location("_open_clip_zero_shot_metadata", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


# --- templates and class names ---------------------------------------------------------------

def test_imagenet_templates_equal_open_clips_element_by_element() -> None:
    metadata = _open_clip_metadata()
    theirs = [template("{c}") for template in metadata.OPENAI_IMAGENET_TEMPLATES]
    assert len(IMAGENET_TEMPLATES) == len(theirs) == 80
    for i, (ours, published) in enumerate(zip(IMAGENET_TEMPLATES, theirs)):
        assert ours == published, f"template {i}"
    for template in metadata.OPENAI_IMAGENET_TEMPLATES:  # and the filled prompts
        assert format_prompt(template("{c}"), "goldfish") == template("goldfish")


def test_imagenet_class_names_equal_open_clips_element_by_element() -> None:
    theirs = list(_open_clip_metadata().IMAGENET_CLASSNAMES)
    ours = imagenet_class_names()
    assert len(ours) == len(theirs) == 1000
    for i, (name, published) in enumerate(zip(ours, theirs)):
        assert name == published, f"class {i}"
    assert ours[0] == "tench" and imagenet_wnids()[0] == "n01440764"


def test_published_templates_are_applied_verbatim() -> None:
    assert IMAGENET_TEMPLATES[44] == "a origami {c}."
    assert format_prompt("a origami {c}.", "goldfish") == "a origami goldfish."
    assert format_prompt("a photo of a {c}.", "ostrich") == "a photo of a ostrich."
    assert format_prompt("a embroidered {c}.", "electric ray") == "a embroidered electric ray."
    assert templates_for("imagenet:/data/imagenet/val") == IMAGENET_TEMPLATES
    assert all("{a}" not in t and t.count("{c}") == 1 for t in IMAGENET_TEMPLATES)
    names = imagenet_class_names()
    assert all(format_prompt(t, c) == t.format(c=c) for t in IMAGENET_TEMPLATES for c in names)


def test_own_templates_fix_their_article() -> None:
    assert format_prompt("a photo of {a} {c}.", "ankle boot") == "a photo of an ankle boot."
    assert format_prompt("{a} {c} emoji.", "one-piece swimsuit") == "a one-piece swimsuit emoji."
    assert format_prompt("a photo of a {}.", "apple") == "a photo of a apple."  # {} is {c}
    for templates in (GENERIC_TEMPLATES, FASHION_TEMPLATES, DIGIT_TEMPLATES, EMOJI_TEMPLATES,
                      EMOJI_OBJECT_TEMPLATES):
        assert all("{}" not in t and t.count("{c}") == 1 for t in templates)


@pytest.mark.parametrize("template", ["a photo.", "a {label}.", "a {c.", "{c} {0} {x}"])
def test_bad_templates_are_user_errors(template: str) -> None:
    with pytest.raises(UserError, match="bad prompt template"):
        format_prompt(template, "cat")


# --- acc1 / acc5 / mean_per_class_recall ------------------------------------------------------

def test_acc5_only_with_at_least_five_classes() -> None:
    labels = torch.tensor([0, 1, 2, 3])
    four = zeroshot.evaluate(torch.eye(4), labels, torch.eye(4))
    assert four == {"acc1": 1.0, "mean_per_class_recall": 1.0}  # no acc5 (CLIP_benchmark: NaN)
    # 6 classes; the true class ranks 1st, 2nd, 5th and 6th: acc1 1/4, acc5 3/4
    classifier = torch.eye(6)
    rank = {1: [0, 1, 2, 3, 4, 5], 2: [1, 0, 2, 3, 4, 5], 5: [1, 2, 3, 4, 0, 5],
            6: [1, 2, 3, 4, 5, 0]}
    images = torch.stack([torch.tensor([6.0 - order.index(c) for c in range(6)])
                          for order in rank.values()])  # class 0 is the truth everywhere
    six = zeroshot.evaluate(images, torch.zeros(4, dtype=torch.long), classifier)
    assert six == {"acc1": 0.25, "acc5": 0.75, "mean_per_class_recall": 0.25}


class Items:
    """A labelled Source whose image i is a flat grey of value label(i): the oracle reads it."""

    def __init__(self, name: str, class_names: list[str], per_class: int = 2) -> None:
        self.name, self.fingerprint, self.class_names = name, f"{name}-v1", class_names
        self.per_class = per_class

    def __len__(self) -> int:
        return len(self.class_names) * self.per_class

    def load(self, index: int) -> Example:
        label = index % len(self.class_names)
        return Example(str(index), Image.new("L", (2, 2), label), {"raw": "x"}, label)


class OracleModel:
    """Each class name has a fixed random text vector; a prompt embeds as its class's vector and
    an image as the vector of its true class, so image embeddings equal the right class's text
    embedding. Every prompt it is asked to embed is recorded."""

    def __init__(self, class_names: list[str], dim: int = 32) -> None:
        self.names = sorted(class_names, key=len, reverse=True)  # longest match first
        generator = torch.Generator().manual_seed(0)
        self.vectors = {n: torch.randn(dim, generator=generator) for n in class_names}
        self.order = list(class_names)
        self.prompts: list[str] = []

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image, np.float32))[None]  # 1 x 2 x 2: the label

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        labels = pixels[:, 0, 0, 0].round().long().tolist()
        return torch.stack([self.vectors[self.order[i]] for i in labels])

    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        self.prompts += texts
        return torch.stack([self.vectors[next(n for n in self.names if n in t)] for t in texts])


@pytest.mark.parametrize("count", [3, 4, 5, 10])
def test_oracle_zero_shot_on_imagenet_prompts(count: int) -> None:
    names = imagenet_class_names()[:count]
    model = OracleModel(names)
    result = tasks.zeroshot_classification(model, Items("imagenet:/fake", names), None, CTX)
    assert result.metrics["acc1"] == 1.0 and result.metrics["mean_per_class_recall"] == 1.0
    assert ("acc5" in result.metrics) == (count >= 5)
    if count >= 5:
        assert result.metrics["acc5"] == 1.0
    assert len(model.prompts) == 80 * count
    assert model.prompts[:2] == ["a bad photo of a tench.", "a photo of many tench."]
    assert "a origami goldfish." in model.prompts and "a photo of a goldfish." in model.prompts
    assert result.details["templates"] == IMAGENET_TEMPLATES


def test_oracle_zero_shot_near_chance_when_images_are_shuffled() -> None:
    names = imagenet_class_names()[:10]
    model = OracleModel(names)
    generator = torch.Generator().manual_seed(1)
    embedded = torch.stack([model.vectors[n] for n in names])
    classifier = zeroshot.build_classifier(model.encode_text, names, IMAGENET_TEMPLATES)
    torch.testing.assert_close(classifier, F.normalize(embedded, dim=-1))
    labels = torch.randint(0, 10, (2000,), generator=generator)
    images = embedded[torch.randint(0, 10, (2000,), generator=generator)]
    metrics = zeroshot.evaluate(images, labels, classifier)
    assert abs(metrics["acc1"] - 0.1) < 0.03 and abs(metrics["acc5"] - 0.5) < 0.05


# --- Karpathy retrieval ----------------------------------------------------------------------

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "white": (255,) * 3}


def _karpathy(root: Path) -> Path:
    """COCO-style Karpathy JSON: 3 test images (5, 6 and 5 captions, one repeated), one train
    and one val image that must not appear."""
    def sentences(colour: str, n: int, repeat: bool = False) -> list[dict]:
        texts = [f"a {colour} picture, caption {k}." for k in range(n)]
        if repeat:
            texts[-1] = texts[0]
        return [{"raw": t, "tokens": t.split(), "sentid": k} for k, t in enumerate(texts)]

    rows = [("red", "test", 5, False), ("white", "train", 5, False), ("green", "test", 6, False),
            ("blue", "test", 5, True), ("white", "val", 5, False)]
    entries = []
    for number, (colour, split, n, repeat) in enumerate(rows):
        folder = "train2014" if split == "train" else "val2014"
        filename = f"COCO_{folder}_{number:012d}.jpg"
        (root / folder).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8), COLOURS[colour]).save(root / folder / filename)
        entries.append({"filepath": folder, "filename": filename, "split": split, "imgid": number,
                        "cocoid": number, "sentences": sentences(colour, n, repeat)})
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    return root


class ColourModel:
    """Image: mean RGB; text: the RGB of the colour word it names. A perfect retriever here."""

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return pixels.mean(dim=(2, 3)) + 1e-3

    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        return torch.stack([torch.tensor(next(rgb for name, rgb in COLOURS.items() if name in t),
                                         dtype=torch.float32) / 255 for t in texts]) + 1e-3


def test_karpathy_test_split_keeps_every_caption(tmp_path: Path) -> None:
    source = KarpathyCaptions(_karpathy(tmp_path), "coco")
    assert source.name == f"coco:{tmp_path}" and len(source) == 3  # test split only
    assert [len(source.captions(i)) for i in range(3)] == [5, 6, 5]
    assert source.captions(2)[4] == source.captions(2)[0]  # a repeated caption stays
    assert list(source.load(1).captions) == ["0", "1", "2", "3", "4", "5"]
    result = tasks.zeroshot_retrieval(ColourModel(), source, None, CTX)
    assert result.metrics["image_retrieval_recall@1"] == 1.0
    assert result.metrics["text_retrieval_recall@1"] == 1.0
    answers = [len(item["answers"]) for item in result.details["image_to_text"]]
    assert sorted(set(answers)) == [5, 6]  # 16 caption queries: every caption of every image
    sliced = create_benchmark(f"coco:{tmp_path}[1:]")  # a slice keeps every caption too
    details = tasks.zeroshot_retrieval(ColourModel(), sliced, None, CTX).details
    assert details["image_to_text"][-1]["answers"] == source.captions(2)  # the repeat included
    assert len(details["image_to_text"][0]["answers"]) == 6
