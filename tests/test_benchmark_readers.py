"""Readers of the standard evaluation datasets, each on a tiny fixture in its released layout."""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlalign.data.base import RAW, BadItem, Example
from vlalign.data.benchmarks.ade20k import ADE20K, ADE20K_CLASSES
from vlalign.data.benchmarks.base import IGNORE_INDEX, PairItem, PairSet, SegmentationSet
from vlalign.data.benchmarks.imagenet import ImageNetVal, imagenet_class_names, imagenet_wnids
from vlalign.data.benchmarks.karpathy import KarpathyCaptions
from vlalign.data.benchmarks.mmvp import MMVP
from vlalign.data.benchmarks.registry import BENCHMARKS, BenchmarkSubset, create_benchmark
from vlalign.data.benchmarks.voc import VOC_CLASSES, VOCSegmentation
from vlalign.data.benchmarks.winoground import Winoground
from vlalign.data.registry import Subset
from vlalign.errors import UserError

SIZE = (8, 6)  # width, height


def image(path: Path, color: tuple[int, int, int] = (200, 30, 30), size=SIZE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = "PNG" if path.suffix.lower() == ".png" else "JPEG"
    Image.new("RGB", size, color).save(path, fmt)
    return path


def corrupt(path: Path) -> None:
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")


def palette_mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = Image.fromarray(values.astype(np.uint8), mode="P")
    mask.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    mask.save(path)


def gray_mask(path: Path, values: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(values.astype(np.uint8), mode="L").save(path)


# --- ImageNet --------------------------------------------------------------------------------

def test_imagenet_class_file() -> None:
    text = resources.files("vlalign.data.benchmarks").joinpath("imagenet_classes.tsv").read_text()
    lines = text.splitlines()
    assert len(lines) == 1000 and all(len(line.split("\t")) == 2 for line in lines)
    wnids, names = imagenet_wnids(), imagenet_class_names()
    assert wnids == sorted(wnids) and len(set(wnids)) == 1000 and len(names) == 1000
    assert (wnids[0], names[0]) == ("n01440764", "tench")
    assert (wnids[1], names[1]) == ("n01443537", "goldfish")
    assert (wnids[207], names[207]) == ("n02099601", "Golden Retriever")  # OpenAI's casing
    assert (wnids[999], names[999]) == ("n15075141", "toilet paper")


def make_imagenet(root: Path) -> Path:
    image(root / "n01440764" / "ILSVRC2012_val_00000293.JPEG")
    image(root / "n01440764" / "ILSVRC2012_val_00002138.JPEG", (0, 0, 200))
    image(root / "n15075141" / "ILSVRC2012_val_00000001.JPEG")
    image(root / "n02099601" / "ILSVRC2012_val_00000002.jpeg")
    (root / "LOC_val_solution.csv").write_text("ignored\n")
    return root


def test_imagenet_labels_and_names(tmp_path: Path) -> None:
    source = ImageNetVal(make_imagenet(tmp_path / "val"))
    assert len(source) == 4 and len(source.class_names) == 1000
    labels = {source.load(i).key: source.load(i).label for i in range(len(source))}
    assert labels == {"n01440764/ILSVRC2012_val_00000293.JPEG": 0,
                      "n01440764/ILSVRC2012_val_00002138.JPEG": 0,
                      "n02099601/ILSVRC2012_val_00000002.jpeg": 207,
                      "n15075141/ILSVRC2012_val_00000001.JPEG": 999}
    example = source.load(len(source) - 1)
    assert isinstance(example, Example) and example.image.mode == "RGB"
    assert source.class_names[example.label] == "toilet paper"
    assert source.class_names[0] == "tench"
    assert example.captions[RAW] == "a photo of a toilet paper."
    assert source.name.startswith("imagenet:") and len(source.fingerprint) == 40
    # the ImageNet root holding val/ works too, with the same items
    assert [k for k, _ in ImageNetVal(tmp_path).items] == [k for k, _ in source.items]


def test_imagenet_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        ImageNetVal(tmp_path / "nope")
    root = make_imagenet(tmp_path / "val")
    before = ImageNetVal(root).fingerprint
    image(root / "n01440764" / "extra.JPEG")
    assert ImageNetVal(root).fingerprint != before
    corrupt(root / "n01440764" / "extra.JPEG")
    source = ImageNetVal(root)
    with pytest.raises(BadItem, match="extra.JPEG"):
        source.load(source.items.index(("n01440764/extra.JPEG", 0)))
    image(root / "goldfish" / "x.JPEG")
    with pytest.raises(UserError, match="'goldfish'"):
        ImageNetVal(root)


# --- Karpathy COCO / Flickr30k ---------------------------------------------------------------

def sentences(*texts: str) -> list[dict]:
    return [{"raw": text, "tokens": text.lower().split(), "sentid": i}
            for i, text in enumerate(texts)]


def make_coco(root: Path) -> Path:
    entries = [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000001.jpg", "split": "test",
         "sentences": sentences(" A red bus. ", "A bus on a road."), "imgid": 0, "cocoid": 1},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000002.jpg",
         "split": "train", "sentences": sentences("A cat."), "imgid": 1, "cocoid": 2},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000003.jpg", "split": "test",
         "sentences": sentences("Two dogs.", "Dogs playing.", "A park."), "imgid": 2,
         "cocoid": 3},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000004.jpg", "split": "val",
         "sentences": sentences("A kite."), "imgid": 3, "cocoid": 4},
    ]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_coco.json").write_text(json.dumps({"images": entries, "dataset": "coco"}))
    for entry in entries:
        image(root / entry["filepath"] / entry["filename"])
    return root


def make_flickr(root: Path, folder: str = "flickr30k-images") -> Path:
    entries = [{"filename": f"{n}.jpg", "split": split, "imgid": n,
                "sentences": sentences(f"Picture {n} one.", f"Picture {n} two.")}
               for n, split in ((100, "test"), (200, "train"), (300, "test"))]
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset_flickr30k.json").write_text(
        json.dumps({"images": entries, "dataset": "flickr30k"}))
    for entry in entries:
        image((root / folder if folder else root) / entry["filename"])
    return root


def test_karpathy_coco(tmp_path: Path) -> None:
    source = KarpathyCaptions(make_coco(tmp_path), "coco")
    assert len(source) == 2 and source.class_names is None
    assert source.captions(0) == ["A red bus.", "A bus on a road."]
    example = source.load(1)
    assert example.key == "val2014/COCO_val2014_000000000003.jpg" and example.label is None
    assert example.captions == {"0": "Two dogs.", "1": "Dogs playing.", "2": "A park."}
    assert example.image.size == SIZE
    val = KarpathyCaptions(tmp_path, "coco", split="val")
    assert len(val) == 1 and val.captions(0) == ["A kite."]
    assert val.fingerprint != source.fingerprint
    with pytest.raises(UserError, match="split 'dev'"):
        KarpathyCaptions(tmp_path, "coco", split="dev")


@pytest.mark.parametrize("folder", ["flickr30k-images", "images", ""])
def test_karpathy_flickr_image_folders(tmp_path: Path, folder: str) -> None:
    source = KarpathyCaptions(make_flickr(tmp_path, folder), "flickr30k")
    assert [source.load(i).key for i in range(len(source))] == ["100.jpg", "300.jpg"]
    assert source.load(1).captions == {"0": "Picture 300 one.", "1": "Picture 300 two."}
    assert source.image_path(0) == (tmp_path / folder / "100.jpg" if folder
                                    else tmp_path / "100.jpg")


def test_karpathy_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="dataset_coco.json"):
        KarpathyCaptions(tmp_path, "coco")
    make_coco(tmp_path / "coco")
    shutil.rmtree(tmp_path / "coco" / "val2014")
    with pytest.raises(UserError, match="no coco test images found.*val2014"):
        KarpathyCaptions(tmp_path / "coco", "coco")
    root = make_flickr(tmp_path)
    path = root / "dataset_flickr30k.json"
    before = KarpathyCaptions(root, "flickr30k").fingerprint
    document = json.loads(path.read_text())
    document["images"][0]["sentences"][0]["raw"] = "Changed."
    path.write_text(json.dumps(document))
    assert KarpathyCaptions(root, "flickr30k").fingerprint != before
    del document["images"][2]["sentences"]
    path.write_text(json.dumps(document))
    with pytest.raises(UserError, match=r"dataset_flickr30k.json: images\[2\].*sentences"):
        KarpathyCaptions(root, "flickr30k")
    path.write_text("{not json")
    with pytest.raises(UserError, match="dataset_flickr30k.json: invalid JSON"):
        KarpathyCaptions(root, "flickr30k")
    make_flickr(root)
    corrupt(root / "flickr30k-images" / "300.jpg")
    with pytest.raises(BadItem, match="300.jpg"):
        KarpathyCaptions(root, "flickr30k").load(1)


# --- Winoground ------------------------------------------------------------------------------

def make_winoground(root: Path) -> Path:
    data = root / "data"
    records = [
        {"id": 0, "image_0": "ex_0_img_0", "image_1": "ex_0_img_1",
         "caption_0": "an old person kisses a young person",
         "caption_1": "a young person kisses an old person", "tag": "Noun",
         "secondary_tag": "", "num_main_preds": 1, "collapsed_tag": "Object"},
        {"id": 1, "image_0": "ex_1_img_0", "image_1": "ex_1_img_1",
         "caption_0": "the dog is on the left", "caption_1": "the dog is on the right",
         "tag": "Adjective-Spatial", "secondary_tag": "Symbolic", "num_main_preds": 1,
         "collapsed_tag": "Relation"},
    ]
    data.mkdir(parents=True, exist_ok=True)
    (data / "examples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for r in records:
        image(data / "images" / f"{r['image_0']}.png", (255, 0, 0))
        image(data / "images" / f"{r['image_1']}.png", (0, 0, 255))
    return root


def test_winoground(tmp_path: Path) -> None:
    pairs = Winoground(make_winoground(tmp_path))
    assert isinstance(pairs, PairSet) and len(pairs) == 2
    item = pairs.load(1)
    assert isinstance(item, PairItem) and item.key == "1" and item.tag == "Relation"
    assert item.captions == ("the dog is on the left", "the dog is on the right")
    assert item.images[0].getpixel((0, 0)) == (255, 0, 0)
    assert item.images[1].getpixel((0, 0)) == (0, 0, 255)
    assert pairs.load(0).tag == "Object" and pairs.record(1)["secondary_tag"] == "Symbolic"
    assert Winoground(tmp_path / "data").fingerprint == pairs.fingerprint  # ROOT = data/ too


def test_winoground_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="examples.jsonl"):
        Winoground(tmp_path)
    root = make_winoground(tmp_path)
    path = root / "data" / "examples.jsonl"
    before = Winoground(root).fingerprint
    path.write_text(path.read_text().replace("on the left", "at the left"))
    assert Winoground(root).fingerprint != before
    corrupt(root / "data" / "images" / "ex_1_img_1.png")
    with pytest.raises(BadItem, match="ex_1_img_1.png"):
        Winoground(root).load(1)
    path.write_text(path.read_text() + "{broken\n")
    with pytest.raises(UserError, match="examples.jsonl: line 3"):
        Winoground(root)
    path.write_text(json.dumps({"id": 5, "image_0": "a", "image_1": "b", "caption_0": "x"}))
    with pytest.raises(UserError, match="examples.jsonl: line 1 has no 'caption_1'"):
        Winoground(root)


# --- MMVP-VLM --------------------------------------------------------------------------------

QUESTIONS = """Question ID,Type,Statement
1,Orientation and Direction,The butterfly's wings are closed
2,Orientation and Direction,The butterfly's wings are open
3,Color and Appearance,"The flower is red, not yellow"
4,Color and Appearance,The flower is yellow
"""


def make_mmvp(root: Path, folder: str = "MLLM_VLM Images", text: str = QUESTIONS) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "Questions.csv").write_text(text)
    for qid, kind in ((1, "Orientation and Direction"), (2, "Orientation and Direction"),
                      (3, "Color and Appearance"), (4, "Color and Appearance")):
        image(root / folder / kind / f"{qid}.jpg", (60 * qid, 0, 0))
    return root


@pytest.mark.parametrize("folder", ["MLLM_VLM Images", "MLLM_VLM_Images"])
def test_mmvp(tmp_path: Path, folder: str) -> None:
    pairs = MMVP(make_mmvp(tmp_path, folder))
    assert isinstance(pairs, PairSet) and len(pairs) == 2
    first, second = pairs.load(0), pairs.load(1)
    assert first.key == "1-2" and first.tag == "Orientation and Direction"
    assert first.captions == ("a photo of The butterfly's wings are closed",
                              "a photo of The butterfly's wings are open")
    assert second.captions[0] == "a photo of The flower is red, not yellow"
    assert second.tag == "Color and Appearance"
    reds = [second.images[k].getpixel((0, 0))[0] for k in (0, 1)]  # image k is 60 * qid red
    assert abs(reds[0] - 180) < 10 and abs(reds[1] - 240) < 10


def test_mmvp_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="Questions.csv"):
        MMVP(tmp_path)
    root = make_mmvp(tmp_path)
    before = MMVP(root).fingerprint
    path = root / "Questions.csv"
    path.write_text(QUESTIONS.replace("is yellow", "is golden"))
    assert MMVP(root).fingerprint != before
    path.write_text(QUESTIONS + "5,Texts,A sign\n")
    with pytest.raises(UserError, match=r"Questions.csv: odd number of question rows \(5\)"):
        MMVP(root)
    path.write_text(QUESTIONS.replace("4,Color and Appearance", "4,Texts"))
    with pytest.raises(UserError, match="Questions.csv: line 5 .*Type 'Texts'"):
        MMVP(root)
    path.write_text(QUESTIONS.replace("Statement", "Text"))
    with pytest.raises(UserError, match="Questions.csv: header has no 'Statement'"):
        MMVP(root)
    path.write_text(QUESTIONS)
    corrupt(root / "MLLM_VLM Images" / "Color and Appearance" / "4.jpg")
    with pytest.raises(BadItem, match="4.jpg"):
        MMVP(root).load(1)


# --- Pascal VOC ------------------------------------------------------------------------------

VOC_MASK = np.array([[0, 0, 1, 1, 20, 20, 255, 255]] * 3 + [[15] * 8] * 3)


def make_voc(devkit: Path) -> Path:
    root = devkit / "VOC2012"
    for n, image_id in enumerate(("2007_000033", "2007_000042")):
        image(root / "JPEGImages" / f"{image_id}.jpg", (40 * n, 0, 0))
        palette_mask(root / "SegmentationClass" / f"{image_id}.png", VOC_MASK)
    split_dir = root / "ImageSets" / "Segmentation"
    split_dir.mkdir(parents=True)
    (split_dir / "val.txt").write_text("2007_000033\n2007_000042\n")
    (split_dir / "train.txt").write_text("2007_000042\n")
    return root


def test_voc_protocols(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "VOCdevkit")
    voc20 = VOCSegmentation(root)
    assert isinstance(voc20, SegmentationSet) and len(voc20) == 2
    assert len(voc20.class_names) == 20 and voc20.class_names[0] == "aeroplane"
    item = voc20.load(0)
    assert item.key == "2007_000033" and item.image.mode == "RGB"
    assert item.mask.dtype == np.int64 and item.mask.shape == (SIZE[1], SIZE[0])
    assert item.mask[0].tolist() == [IGNORE_INDEX, IGNORE_INDEX, 0, 0, 19, 19, 255, 255]
    assert (item.mask[4] == 14).all() and voc20.class_names[14] == "person"
    voc21 = VOCSegmentation(tmp_path / "VOCdevkit", background=True)  # ROOT = VOCdevkit
    assert voc21.class_names == VOC_CLASSES and len(VOC_CLASSES) == 21
    assert voc21.class_names[0] == "background" and voc21.class_names[15] == "person"
    assert (voc21.load(1).mask == VOC_MASK).all()
    assert len(VOCSegmentation(root, split="train")) == 1
    assert voc21.fingerprint != voc20.fingerprint


def test_voc_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="val.txt"):
        VOCSegmentation(tmp_path)
    root = make_voc(tmp_path / "VOCdevkit")
    with pytest.raises(UserError, match="trainval.txt"):
        VOCSegmentation(root, split="trainval")
    before = VOCSegmentation(root).fingerprint
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("2007_000033\n")
    assert VOCSegmentation(root).fingerprint != before
    palette_mask(root / "SegmentationClass" / "2007_000033.png", VOC_MASK[:, :4])
    with pytest.raises(BadItem, match="4x6 but its image is 8x6"):
        VOCSegmentation(root).load(0)
    palette_mask(root / "SegmentationClass" / "2007_000033.png", VOC_MASK + (VOC_MASK == 15) * 9)
    with pytest.raises(BadItem, match="class index 24"):
        VOCSegmentation(root).load(0)
    Image.new("RGB", SIZE).save(root / "SegmentationClass" / "2007_000033.png")
    with pytest.raises(BadItem, match="mode RGB"):
        VOCSegmentation(root).load(0)
    corrupt(root / "JPEGImages" / "2007_000033.jpg")
    with pytest.raises(BadItem, match="2007_000033.jpg"):
        VOCSegmentation(root).load(0)


# --- ADE20K ----------------------------------------------------------------------------------

ADE_MASK = np.array([[0, 1, 2, 150, 0, 1, 1, 1]] * 6)


def make_ade(root: Path) -> Path:
    data = root / "ADEChallengeData2016"
    for n in (2, 1):
        stem = f"ADE_val_{n:08d}"
        image(data / "images" / "validation" / f"{stem}.jpg")
        gray_mask(data / "annotations" / "validation" / f"{stem}.png", ADE_MASK * (n == 1))
    image(data / "images" / "training" / "ADE_train_00000001.jpg")
    gray_mask(data / "annotations" / "training" / "ADE_train_00000001.png", ADE_MASK)
    return root


def test_ade20k(tmp_path: Path) -> None:
    assert len(ADE20K_CLASSES) == 150 == len(set(ADE20K_CLASSES))
    assert ADE20K_CLASSES[:5] == ["wall", "building", "sky", "floor", "tree"]
    assert ADE20K_CLASSES[-2:] == ["clock", "flag"]
    ade = ADE20K(make_ade(tmp_path))
    assert isinstance(ade, SegmentationSet) and len(ade) == 2 and ade.class_names[0] == "wall"
    item = ade.load(0)
    assert item.key == "ADE_val_00000001" and item.mask.dtype == np.int64
    assert item.mask[0].tolist() == [IGNORE_INDEX, 0, 1, 149, IGNORE_INDEX, 0, 0, 0]
    assert (ade.load(1).mask == IGNORE_INDEX).all()
    same = ADE20K(tmp_path / "ADEChallengeData2016")
    assert same.fingerprint == ade.fingerprint
    train = ADE20K(tmp_path, split="training")
    assert len(train) == 1 and train.fingerprint != ade.fingerprint


def test_ade20k_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="images/validation"):
        ADE20K(tmp_path)
    root = make_ade(tmp_path)
    masks = root / "ADEChallengeData2016" / "annotations" / "validation"
    shutil.rmtree(masks)
    with pytest.raises(UserError, match="annotations/validation"):
        ADE20K(root)
    make_ade(tmp_path)
    (masks / "ADE_val_00000002.png").unlink()
    ade = ADE20K(root)
    with pytest.raises(BadItem, match="ADE_val_00000002.png"):
        ade.load(1)
    gray_mask(masks / "ADE_val_00000002.png", ADE_MASK + 100)
    with pytest.raises(BadItem, match="class index 250"):
        ADE20K(root).load(1)


# --- registry --------------------------------------------------------------------------------

def test_registry_schemes(tmp_path: Path) -> None:
    make_imagenet(tmp_path / "imagenet" / "val")
    make_coco(tmp_path / "coco")
    make_flickr(tmp_path / "flickr")
    make_winoground(tmp_path / "winoground")
    make_mmvp(tmp_path / "mmvp")
    make_voc(tmp_path / "VOCdevkit")
    make_ade(tmp_path / "ade")
    assert set(BENCHMARKS) >= {"imagenet", "coco", "flickr30k", "winoground", "mmvp", "voc",
                               "voc21", "ade20k"}
    imagenet = create_benchmark(f"imagenet:{tmp_path / 'imagenet' / 'val'}")
    assert isinstance(imagenet, ImageNetVal) and len(imagenet) == 4
    coco = create_benchmark(f"coco:{tmp_path / 'coco'}")
    assert isinstance(coco, KarpathyCaptions) and len(coco) == 2
    coco_val = create_benchmark(f"coco:{tmp_path / 'coco'}?split=val")
    assert len(coco_val) == 1 and coco_val.name.endswith("?split=val")
    assert len(create_benchmark(f"flickr30k:{tmp_path / 'flickr'}")) == 2
    assert len(create_benchmark(f"winoground:{tmp_path / 'winoground'}")) == 2
    assert isinstance(create_benchmark(f"mmvp:{tmp_path / 'mmvp'}"), MMVP)
    voc = create_benchmark(f"voc:{tmp_path / 'VOCdevkit'}")
    assert len(voc.class_names) == 20 and not voc.background
    voc21 = create_benchmark(f"voc21:{tmp_path / 'VOCdevkit'}?split=train")
    assert voc21.background and len(voc21) == 1 and len(voc21.class_names) == 21
    assert len(create_benchmark(f"ade20k:{tmp_path / 'ade'}?split=training")) == 1
    # relative roots resolve under data_root; slices work for every kind of reader
    sliced = create_benchmark("winoground:winoground[1:]", data_root=tmp_path)
    assert isinstance(sliced, BenchmarkSubset) and len(sliced) == 1
    assert sliced.load(0).key == "1" and sliced.class_names is None
    assert sliced.fingerprint != create_benchmark(f"winoground:{tmp_path / 'winoground'}"
                                                  ).fingerprint
    assert len(create_benchmark("voc:VOCdevkit[:1]", data_root=tmp_path)) == 1


def test_registry_errors_and_fallback(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="valid: .*imagenet, coco.*digits"):
        create_benchmark("cifar:test")
    with pytest.raises(UserError, match="needs coco:ROOT"):
        create_benchmark("coco:")
    with pytest.raises(UserError, match="unknown option 'fold' for coco in spec .*; valid: split"):
        create_benchmark(f"coco:{tmp_path}?fold=1")
    with pytest.raises(UserError, match="unknown option 'split' for mmvp in spec .*; valid: none"):
        create_benchmark(f"mmvp:{tmp_path}?split=val")
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        create_benchmark(f"voc:{tmp_path}?split")
    with pytest.raises(UserError, match="option 'split' given twice"):
        create_benchmark(f"voc:{tmp_path}?split=val&split=train")
    with pytest.raises(UserError, match="count='x' of emoji-canvas must be an integer"):
        create_benchmark("emoji-canvas:test?count=x")
    # dataset schemes take no options: a '?' stays in the path (a webdataset glob)
    with pytest.raises(UserError, match=r"shard-\?\?.tar"):
        create_benchmark(f"wds:{tmp_path}/shard-??.tar")
    assert create_benchmark(" DIGITS : test [ 2 : 4 ] ").name == "digits:test[2:4]"
    with pytest.raises(UserError, match="winoground root not found|Winoground root not found"):
        create_benchmark(f"winoground:{tmp_path / 'missing'}")
    digits = create_benchmark("digits:test[:5]")
    assert isinstance(digits, Subset) and len(digits) == 5 and digits.class_names[0] == "zero"
    assert create_benchmark("digits:test").name == "digits:test"
