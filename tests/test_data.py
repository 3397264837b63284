"""Data sources: built-in sets, caption files, folders, tar shards, decoding failures, registry."""

from __future__ import annotations

import csv
import io
import json
import pickle
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageFile

from vlalign.data import (
    DATASETS,
    IMAGENET_TEMPLATES,
    RAW,
    REWRITTEN,
    BadItem,
    Source,
    create_source,
    decode_image,
    source_summary,
    templates_for,
)
from vlalign.data.digits import Digits
from vlalign.data.emoji import Emoji
from vlalign.data.fashion_mnist import FashionMNIST
from vlalign.data.files import CaptionFile
from vlalign.data.image_folder import ImageFolder
from vlalign.data.templates import FASHION_TEMPLATES, class_captions, format_prompt
from vlalign.data.webdataset_source import WebDatasetShards
from vlalign.errors import DataError, UserError

DATA = Path(__file__).resolve().parents[1] / "data"
needs_fashion = pytest.mark.skipif(not (DATA / "fashion-mnist").is_dir(),
                                   reason="Fashion-MNIST not installed (make install)")
needs_emoji = pytest.mark.skipif(not (DATA / "emoji" / "emoji.json").is_file(),
                                 reason="emoji data not installed (make install)")


# ---------------------------------------------------------------- fixture builders

def png_bytes(color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB", size: int = 16) -> bytes:
    """A small valid PNG, noisy enough that its compressed data spans many bytes."""
    image = Image.effect_noise((size, size), 64).convert(mode)
    image.paste(Image.new(mode, (size // 2, size // 2), color), (0, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def jpeg_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (12, 10), (10, 120, 240)).save(buffer, format="JPEG")
    return buffer.getvalue()


def corrupt_png() -> bytes:
    """A PNG whose compressed pixel data is overwritten with garbage."""
    data = bytearray(png_bytes(size=64))
    start = data.index(b"IDAT") + 8
    data[start:start + 200] = bytes(range(200))
    return bytes(data)


def write_images(folder: Path) -> dict[str, str]:
    """Good and broken image files; returns {case: relative path} (``missing`` is never written)."""
    files = {
        "good": ("good.png", png_bytes()),
        "good_jpg": ("good.jpg", jpeg_bytes()),
        "corrupt": ("corrupt.png", corrupt_png()),
        "truncated": ("truncated.png", png_bytes(size=64)[:300]),
        "empty": ("empty.png", b""),
        "text": ("text.jpg", b"this is not an image\n"),
    }
    (folder / "img").mkdir(parents=True, exist_ok=True)
    for name, data in files.values():
        (folder / "img" / name).write_bytes(data)
    return {case: f"img/{name}" for case, (name, _) in files.items()} | {
        "missing": "img/missing.png"}


BAD_CASES = ("corrupt", "truncated", "empty", "text", "missing")


def write_tar(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# ---------------------------------------------------------------- decoding

def test_decode_image_good_inputs(tmp_path: Path) -> None:
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    image = decode_image(png_bytes())
    assert image.mode == "RGB" and image.size == (16, 16)
    (tmp_path / "a.jpg").write_bytes(jpeg_bytes())
    assert decode_image(tmp_path / "a.jpg").size == (12, 10)
    assert decode_image(str(tmp_path / "a.jpg")).mode == "RGB"
    transparent = decode_image(png_bytes(color=(0, 0, 0, 0), mode="RGBA"))
    assert transparent.getpixel((0, 0)) == (255, 255, 255)


@pytest.mark.parametrize("case", BAD_CASES)
def test_decode_image_bad_inputs_raise_baditem(tmp_path: Path, case: str) -> None:
    cases = write_images(tmp_path)
    with pytest.raises(BadItem, match=r"\S"):
        decode_image(tmp_path / cases[case])


# ---------------------------------------------------------------- templates

def test_templates() -> None:
    assert len(IMAGENET_TEMPLATES) == 80 and len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{c}") == 1 and "{a}" not in t for t in IMAGENET_TEMPLATES)
    assert templates_for("imagenet") == IMAGENET_TEMPLATES
    assert templates_for("fashion-mnist:test[:100]")[0] == "a photo of {a} {c}."
    assert templates_for("something-else")[0] == "a photo of {a} {c}."
    assert format_prompt("a photo of {a} {c}.", "ankle boot") == "a photo of an ankle boot."
    assert format_prompt("a photo of {a} {c}.", "unicorn") == "a photo of a unicorn."
    assert format_prompt("a photo of a {c}.", "ankle boot") == "a photo of a ankle boot."
    pairs = {class_captions(FASHION_TEMPLATES, "coat", i) for i in range(50)}
    assert all(raw == "a photo of a coat." and raw != rewritten for raw, rewritten in pairs)
    assert len({rewritten for _, rewritten in pairs}) > 3
    assert class_captions(FASHION_TEMPLATES, "coat", 7) == class_captions(FASHION_TEMPLATES,
                                                                          "coat", 7)


# ---------------------------------------------------------------- built-in sets

@needs_fashion
def test_fashion_mnist() -> None:
    train = FashionMNIST(DATA / "fashion-mnist", "train")
    test = FashionMNIST(DATA / "fashion-mnist", "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert [train.load(i).label for i in range(10)] == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert [test.load(i).label for i in range(5)] == [9, 2, 1, 1, 6]
    example = train.load(0)
    assert example.image.size == (28, 28) and example.image.mode == "RGB"
    assert example.captions[RAW] == "a photo of an ankle boot."
    assert example.captions[REWRITTEN] != example.captions[RAW]
    assert "ankle boot" in example.captions[REWRITTEN]
    assert train.class_names[0] == "t-shirt" and len(train.class_names) == 10
    assert isinstance(train, Source) and train.fingerprint != test.fingerprint


@needs_emoji
def test_emoji_splits_and_captions() -> None:
    train, test, everything = (Emoji(DATA / "emoji", s) for s in ("train", "test", "all"))
    assert len(train) + len(test) == len(everything) == 3786
    assert not {e.base for e in train.entries} & {e.base for e in test.entries}
    assert 0.75 < len(train) / len(everything) < 0.85
    assert sum(bool(e.tones) for e in everything.entries) == 1875
    assert everything.class_names[0] == "smileys & emotion" and len(everything.class_names) == 10
    for entry in everything.entries:
        assert entry.raw_caption and entry.rewritten_caption
        assert entry.raw_caption != entry.rewritten_caption
    santa = next(e for e in everything.entries if e.unified == "1F385-1F3FD")
    assert santa.raw_caption == "father christmas: medium skin tone"
    assert "santa" in santa.rewritten_caption and "medium skin tone" in santa.rewritten_caption
    mixed = next(e for e in everything.entries if len(set(e.tones)) == 2)
    assert all(f"{tone} skin tone" in mixed.raw_caption for tone in mixed.tones)
    index = everything.entries.index(santa)
    example = everything.load(index)
    assert example.image.size == (64, 64) and example.image.mode == "RGB"
    assert example.captions == {RAW: santa.raw_caption, REWRITTEN: santa.rewritten_caption}
    assert everything.class_names[example.label] == "people & body"
    assert everything.entry(index).subcategory == "person-fantasy"
    assert train.fingerprint != test.fingerprint


def test_digits() -> None:
    train, test = Digits("train"), Digits("test")
    assert (len(train), len(test)) == (1500, 297)
    example = test.load(0)
    assert example.image.size == (8, 8) and example.image.mode == "RGB"
    assert train.class_names[example.label] in example.captions[RAW]
    assert example.captions[RAW] != example.captions[REWRITTEN]
    with pytest.raises(IndexError):
        test.load(297)


# ---------------------------------------------------------------- caption files

def write_caption_csv(folder: Path) -> Path:
    cases = write_images(folder)
    path = folder / "pairs.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "caption", "caption_rewritten"])
        writer.writerow([cases["good"], "a red square", "a small red square on noise"])
        writer.writerow([str(folder / cases["good_jpg"]), "a blue image", ""])
        for case in BAD_CASES:
            writer.writerow([cases[case], f"a {case} file", ""])
        writer.writerow([cases["good"], "   ", ""])
        writer.writerow(["", "no image", ""])
    return path


def test_caption_csv(tmp_path: Path) -> None:
    source = CaptionFile(write_caption_csv(tmp_path))
    assert len(source) == 9 and source.class_names is None
    first = source.load(0)
    assert first.captions == {RAW: "a red square", REWRITTEN: "a small red square on noise"}
    assert source.load(1).captions == {RAW: "a blue image"}  # absolute path, no rewritten caption
    for index in range(2, 9):
        with pytest.raises(BadItem):
            source.load(index)
    with pytest.raises(BadItem, match="caption"):
        source.load(7)


def test_caption_jsonl(tmp_path: Path) -> None:
    cases = write_images(tmp_path)
    lines = [json.dumps({"image": cases["good"], "captions": ["raw one", "rewritten one"]}),
             json.dumps({"image_path": cases["good_jpg"], "caption": "a blue image"}),
             *(json.dumps({"image": cases[case], "caption": case}) for case in BAD_CASES),
             json.dumps({"image": cases["good"], "caption": ""}),
             json.dumps({"caption": "no image"}),
             "{not json",
             ""]
    path = tmp_path / "pairs.jsonl"
    path.write_text("\n".join(lines))
    source = CaptionFile(path)
    assert len(source) == 10
    assert source.load(0).captions == {RAW: "raw one", REWRITTEN: "rewritten one"}
    assert source.load(1).captions == {RAW: "a blue image"}
    for index in range(2, 10):
        with pytest.raises(BadItem):
            source.load(index)


def test_caption_file_format_errors(tmp_path: Path) -> None:
    not_text = tmp_path / "image.csv"
    not_text.write_bytes(png_bytes())
    with pytest.raises(DataError, match="image.csv"):
        CaptionFile(not_text)
    no_image = tmp_path / "columns.csv"
    no_image.write_text("path,caption\na.png,hello\n")
    with pytest.raises(DataError, match="columns.csv.*image"):
        CaptionFile(no_image)
    no_records = tmp_path / "empty.jsonl"
    no_records.write_text("hello\nworld\n")
    with pytest.raises(DataError, match="empty.jsonl"):
        CaptionFile(no_records)
    with pytest.raises(UserError, match="nope.csv"):
        CaptionFile(tmp_path / "nope.csv")


# ---------------------------------------------------------------- folders and shards

def test_image_folder(tmp_path: Path) -> None:
    for name, data in [("tabby_cat/a.png", png_bytes()), ("tabby_cat/b.jpg", jpeg_bytes()),
                       ("dog/c.png", png_bytes()), ("dog/notes.txt", b"x"),
                       ("dog/d.png", b"")]:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(data)
    source = ImageFolder(tmp_path)
    assert source.class_names == ["dog", "tabby cat"] and len(source) == 4
    example = source.load(2)
    assert example.label == 1 and "tabby cat" in example.captions[RAW]
    assert example.captions[RAW] != example.captions[REWRITTEN]
    with pytest.raises(BadItem, match="empty"):
        source.load(1)
    with pytest.raises(DataError):
        ImageFolder(tmp_path / "dog")


def write_shards(folder: Path) -> str:
    write_tar(folder / "shard-000.tar", {
        "000.jpg": jpeg_bytes(), "000.txt": b"a blue image",
        "001.png": png_bytes(),
        "001.json": json.dumps({"caption": "red", "caption_rewritten": "a red square"}).encode(),
        "002.jpg": corrupt_png(), "002.txt": b"corrupt",
    })
    write_tar(folder / "shard-001.tar", {
        "003.txt": b"caption without image",
        "sub/004.png": png_bytes(), "sub/004.txt": b"nested key",
        "005.png": png_bytes(), "005.txt": b"  ",
    })
    return str(folder / "shard-{000..001}.tar")


def test_webdataset_shards(tmp_path: Path) -> None:
    source = WebDatasetShards(write_shards(tmp_path))
    assert [key for _, key, _, _ in source.samples] == ["000", "001", "002", "003", "sub/004",
                                                        "005"]
    assert source.load(0).captions == {RAW: "a blue image"}
    assert source.load(1).captions == {RAW: "red", REWRITTEN: "a red square"}
    assert source.load(4).key == "sub/004" and source.load(4).image.size == (16, 16)
    for index, reason in [(2, "corrupt"), (3, "no image"), (5, "caption")]:
        with pytest.raises(BadItem, match=reason):
            source.load(index)
    (tmp_path / "bad.tar").write_bytes(b"not a tar archive" * 50)
    with pytest.raises(DataError, match="bad.tar"):
        WebDatasetShards(tmp_path / "bad.tar")
    with pytest.raises(UserError, match="shard-002"):
        WebDatasetShards(str(tmp_path / "shard-{001..002}.tar"))


class LoadedItems(torch.utils.data.Dataset):
    """Exposes a source's (key, raw caption, width) to a DataLoader."""

    def __init__(self, source: Source) -> None:
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> tuple[str, str, int]:
        example = self.source.load(index)
        return example.key, example.captions[RAW], example.image.size[0]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_sources_work_in_dataloader_workers(tmp_path: Path, context: str) -> None:
    source = create_source(f"wds:{write_shards(tmp_path)}[:2]")
    source.load(0)  # the parent holds an open shard handle now
    assert pickle.loads(pickle.dumps(source)).load(1).key == "001"
    loader = torch.utils.data.DataLoader(LoadedItems(source), batch_size=None, num_workers=1,
                                         multiprocessing_context=context)
    assert [tuple(item) for item in loader] == [("000", "a blue image", 12), ("001", "red", 16)]


@pytest.mark.parametrize("spec", ["digits:test[:3]",
                                  pytest.param("fashion-mnist:test[:3]", marks=needs_fashion),
                                  pytest.param("emoji:test[:3]", marks=needs_emoji)])
def test_builtin_sources_pickle(spec: str) -> None:
    source = create_source(spec, DATA)
    copy = pickle.loads(pickle.dumps(source))
    assert copy.fingerprint == source.fingerprint
    assert copy.load(2).captions == source.load(2).captions


# ---------------------------------------------------------------- registry

def test_registry_specs_and_slices(tmp_path: Path) -> None:
    assert set(DATASETS) >= {"fashion-mnist", "emoji", "digits", "csv", "jsonl", "folder", "wds"}
    whole = create_source("digits:train")
    part = create_source("digits:train[10:20]")
    assert len(part) == 10 and part.name == "digits:train[10:20]"
    assert part.load(0).captions == whole.load(10).captions
    assert len(create_source("digits:test[-7:]")) == 7
    assert len(create_source("digits:test[:5000]")) == 297
    assert part.fingerprint != whole.fingerprint
    summary = source_summary(part)
    assert summary["len"] == 10 and summary["classes"][0] == "zero"
    assert len(create_source(f"csv:{write_caption_csv(tmp_path)}")) == 9
    assert len(create_source(f"wds:{write_shards(tmp_path)}")) == 6


def test_registry_paths_keep_colons_at_signs_brackets_and_globs(tmp_path: Path) -> None:
    """Dataset specs have no @stage or ?options: those characters belong to the path."""
    odd = tmp_path / "user@host:data[v1]"
    odd.mkdir()
    pairs = write_caption_csv(odd)
    assert len(create_source(f"csv:{pairs}")) == 9
    assert len(create_source(f"csv:{pairs}[2:5]")) == 3
    globbed = tmp_path / "user@host:shards"  # no brackets: a glob would read them as a class
    globbed.mkdir()
    shards = write_shards(globbed)
    assert len(create_source(f"wds:{shards.replace('{000..001}', '00?')}")) == 6
    with pytest.raises(UserError, match=r"pairs.csv\?x=1"):
        create_source(f"csv:{pairs}?x=1")


def test_registry_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="unknown dataset 'mnist'.*fashion-mnist.*emoji"):
        create_source("mnist:train")
    with pytest.raises(UserError, match="train"):
        create_source("digits:validation")
    with pytest.raises(UserError, match="emoji:train"):
        create_source("emoji")
    with pytest.raises(UserError, match=r"emoji.*make install"):
        create_source("emoji:train", data_root=tmp_path)
    with pytest.raises(UserError, match="missing.csv"):
        create_source(f"csv:{tmp_path / 'missing.csv'}")
    with pytest.raises(UserError, match="nowhere"):
        create_source(f"folder:{tmp_path / 'nowhere'}")
