"""Evaluation tasks end to end on synthetic data with an oracle model that must score 1.0 (and
its reversed twin that must score 0), result files in CLIP_benchmark's shape, the merged table."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlalign.data.base import BadItem, Example
from vlalign.data.benchmarks.base import PairItem, SegmentationItem
from vlalign.errors import UserError
from vlalign.eval import tasks
from vlalign.eval.features import embed_images
from vlalign.eval.run import (
    Job,
    dataset_name,
    details_file,
    load_records,
    make_record,
    merge,
    offline_suite,
    write_table,
)

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
NAMES = list(COLOURS)
pytestmark = pytest.mark.usefixtures("one_thread")


class ColourModel:
    """Embeds an image as its mean RGB and a text as the RGB of the colour word it contains;
    ``reverse`` maps each word to the next colour instead (a model that is always wrong)."""

    def __init__(self, reverse: bool = False) -> None:
        self.reverse = reverse

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.asarray(image.convert("RGB"), np.float32) / 255).permute(2, 0, 1)

    def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return pixels.mean(dim=(2, 3)) + 1e-3

    def encode_image_tokens(self, images: list[Image.Image]) -> tuple[torch.Tensor, tuple]:
        pixels = torch.stack([self.preprocess(im) for im in images])  # B x 3 x 8 x 8
        patches = torch.nn.functional.avg_pool2d(pixels, 4)  # B x 3 x 2 x 2
        return patches.flatten(2).transpose(1, 2) + 1e-3, (2, 2)

    def encode_text(self, texts: list[str], normalize: bool = False) -> torch.Tensor:
        rows = []
        for text in texts:
            index = next(i for i, name in enumerate(NAMES) if name in text)
            index = (index + 1) % 3 if self.reverse else index
            rows.append(torch.tensor(COLOURS[NAMES[index]], dtype=torch.float32) / 255)
        return torch.stack(rows)


def _square(colour: str, size: int = 8) -> Image.Image:
    return Image.new("RGB", (size, size), COLOURS[colour])


class Squares:
    """A labelled Source of single-colour squares, each captioned with its colour."""

    name, fingerprint, class_names = "squares", "squares-v1", NAMES

    def __len__(self) -> int:
        return 30

    def load(self, index: int) -> Example:
        colour = NAMES[index % 3]
        return Example(str(index), _square(colour), {"raw": f"a {colour} square"}, index % 3)


class ColourPairs:
    name = "colour-pairs"

    def __len__(self) -> int:
        return 6

    def load(self, index: int) -> PairItem:
        a, b = NAMES[index % 3], NAMES[(index + 1) % 3]
        return PairItem(str(index), (_square(a), _square(b)), (f"{a} one", f"{b} one"),
                        tag="even" if index % 2 == 0 else "odd")


class HalfCanvases:
    """Left half one colour, right half another; the exact mask."""

    name, class_names = "halves", NAMES

    def __len__(self) -> int:
        return 3

    def load(self, index: int) -> SegmentationItem:
        image = Image.new("RGB", (8, 8), COLOURS[NAMES[index]])
        image.paste(_square(NAMES[(index + 1) % 3], 4).resize((4, 8)), (4, 0))
        mask = np.full((8, 8), index, dtype=np.int64)
        mask[:, 4:] = (index + 1) % 3
        return SegmentationItem(str(index), image, mask)


CTX = tasks.Context(progress=False)


@pytest.mark.parametrize(("reverse", "expected"), [(False, 1.0), (True, 0.0)])
def test_zeroshot_oracle_and_reversed(reverse: bool, expected: float) -> None:
    result = tasks.zeroshot_classification(ColourModel(reverse), Squares(), None, CTX)
    assert result.metrics["acc1"] == expected
    assert result.metrics["mean_per_class_recall"] == expected
    assert result.arrays["confusion"].trace() == 30 * expected
    assert result.details["class_names"] == NAMES


def test_retrieval_oracle_finds_a_same_colour_item() -> None:
    result = tasks.zeroshot_retrieval(ColourModel(), Squares(), None, CTX)
    # 10 identical squares per colour: a caption's own image ties with 9 others, so only the
    # recall@10 values are 1.0 (ties count against the query).
    assert result.metrics["image_retrieval_recall@10"] == 1.0
    assert result.metrics["text_retrieval_recall@10"] == 1.0
    first = result.details["text_to_image"][0]
    assert all(i % 3 == first["answer"] % 3 for i in first["top5"])


@pytest.mark.parametrize(("reverse", "expected"), [(False, 1.0), (True, 0.0)])
def test_pair_tasks_oracle_and_reversed(reverse: bool, expected: float) -> None:
    wino = tasks.winoground(ColourModel(reverse), ColourPairs(), None, CTX).metrics
    assert wino["text_acc"] == wino["image_acc"] == wino["acc"] == expected  # CLIP_benchmark's
    assert wino["acc/even"] == wino["acc/odd"] == expected
    mmvp = tasks.mmvp(ColourModel(reverse), ColourPairs(), None, CTX).metrics
    assert mmvp["mmvp_average"] == expected


def test_segmentation_oracle_is_perfect_and_keeps_examples() -> None:
    result = tasks.zeroshot_segmentation(ColourModel(), HalfCanvases(), None, CTX)
    assert result.metrics["miou"] == 1.0 and result.metrics["pixel_acc"] == 1.0
    assert set(result.details["examples"]) == {0, 1, 2}
    assert np.array_equal(result.arrays["pred_1"], result.arrays["mask_1"])


def test_knn_and_linear_probe_separate_colours() -> None:
    knn = tasks.knn_classification(ColourModel(), Squares(), Squares(), CTX).metrics
    assert knn["knn_acc@10"] == 1.0 and knn["train_size"] == 30
    probe = tasks.linear_probe_classification(ColourModel(), Squares(), Squares(), CTX).metrics
    assert probe["lp_acc1"] == 1.0 and "weight_decay" in probe  # CLIP_benchmark's key


def test_tasks_refuse_the_wrong_kind_of_data() -> None:
    with pytest.raises(UserError, match="zeroshot_segmentation needs a segmentation set, got "
                                        "'colour-pairs'"):
        tasks.zeroshot_segmentation(ColourModel(), ColourPairs(), None, CTX)
    with pytest.raises(UserError, match="pair scoring needs a Winoground/MMVP-style pair set"):
        tasks.winoground(ColourModel(), Squares(), None, CTX)
    with pytest.raises(UserError, match="knn needs training data"):
        tasks.knn_classification(ColourModel(), Squares(), None, CTX)
    with pytest.raises(UserError, match="labelled image dataset"):
        tasks.zeroshot_classification(ColourModel(), HalfCanvases(), None, CTX)


def test_result_files_table_and_slugs(tmp_path: Path) -> None:
    records = [
        {"dataset": "d1", "model": "a", "pretrained": "x", "task": "t", "language": "en",
         "metrics": {"acc1": 0.5, "acc1/cat": 0.1, "skipped": 0}},
        {"dataset": "d1", "model": "b", "pretrained": "y", "task": "t", "language": "en",
         "metrics": {"acc1": 0.25, "acc5": 1.0}},
    ]
    header, rows = merge(records)
    assert header == ["task", "dataset", "metric", "a", "b"]
    assert rows == [["t", "d1", "acc1", 0.5, 0.25], ["t", "d1", "acc5", None, 1.0]]
    write_table(records, tmp_path)
    assert "| t | d1 | acc5 | – | 1.0000 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().splitlines()[1] == "t,d1,acc1,0.5,0.25"
    for record in records:
        folder = tmp_path / record["model"]
        (folder / "details").mkdir(parents=True)
        (folder / "t__d1.json").write_text(json.dumps(record))
        (folder / "details" / "t__d1.json").write_text("{}")
        (folder / "t__d0.details.json").write_text("{}")  # an older vlalign's details
    assert load_records(tmp_path) == records
    slug = Job("knn", "emoji-canvas:test?by=name&count=4").slug
    assert slug == "knn__emoji-canvas_test_by_name_count_4"
    assert details_file(tmp_path / "x.json", ".npz") == tmp_path / "details" / "x.npz"
    assert {job.task for job in offline_suite()} == set(tasks.TASKS)


def test_records_follow_clip_benchmark() -> None:
    """CLIP_benchmark's dataset and task names, open_clip's architecture as the model, counts
    and our names under "vlalign"; the table keys on our names and specs."""
    job = Job("winoground", "winoground:/data/winoground")
    record = make_record(job, "clip", "open_clip:ViT-B-32/openai",
                         {"text_acc": 0.5, "image_acc": 0.25, "acc": 0.25, "acc/noun": 0.0})
    assert record == {"dataset": "winoground", "model": "ViT-B-32", "pretrained": "openai",
                      "task": "image_caption_selection", "language": "en",
                      "metrics": {"text_acc": 0.5, "image_acc": 0.25, "acc": 0.25,
                                  "acc/noun": 0.0},
                      "vlalign": {"name": "clip", "task": "winoground",
                                  "spec": "winoground:/data/winoground", "train_spec": None}}
    knn = make_record(Job("knn", "fashion-mnist:test[:500]", "fashion-mnist:train"), "sail",
                      "runs/sail", {"knn_acc@10": 0.5, "train_size": 9})
    assert (knn["dataset"], knn["model"], knn["pretrained"]) == ("fashion-mnist", "sail",
                                                                "runs/sail")
    assert knn["metrics"] == {"knn_acc@10": 0.5} and knn["vlalign"]["train_size"] == 9
    header, rows = merge([record, knn])
    assert header[3:] == ["clip", "sail"]
    assert rows[0] == ["winoground", "winoground:/data/winoground", "acc", 0.25, None]
    names = {"imagenet:/d/in1k": "imagenet1k", "coco:/d/coco?split=val": "mscoco_captions",
             "flickr30k:/d/f30k[:100]": "flickr30k", "emoji:test": "emoji",
             "emoji-pairs:test?per_tag=5": "emoji-pairs",
             "emoji-canvas:test?by=subcategory&count=4": "emoji-canvas/subcategory",
             "folder:/data/pets/": "pets", "csv:/d/pairs.csv": "pairs",
             "wds:/d/cc3m/{00000..00010}.tar": "cc3m", "wds:/d/digits/test/0.tar": "digits"}
    assert {spec: dataset_name(spec) for spec in names} == names


class _WithBadItems(Squares):
    """Squares where every seventh item cannot be read."""

    def load(self, index: int) -> Example:
        if index % 7 == 3:
            raise BadItem(f"item {index}: truncated file")
        return super().load(index)


def test_decoding_workers_give_the_same_embeddings_and_skip_the_same_items(caplog) -> None:
    """Images decoded in DataLoader worker processes: the same rows, in order, and each bad
    item skipped, logged and counted once, whatever the worker count."""
    model = ColourModel()
    inline = embed_images(model, _WithBadItems(), batch_size=4, progress=False, num_workers=0)
    workers = embed_images(model, _WithBadItems(), batch_size=4, progress=False, num_workers=2)
    assert inline.skipped == workers.skipped == 4  # items 3, 10, 17, 24
    np.testing.assert_array_equal(inline.indices, workers.indices)
    assert 3 not in inline.indices and len(inline.indices) == 26
    torch.testing.assert_close(inline.embeddings, workers.embeddings, rtol=0, atol=0)
    assert caplog.text.count("truncated file") == 8  # four per run


def test_pixels_follow_the_model_device() -> None:
    """Pixels go to the model's device (its parameters' device for a plain nn.Module)."""
    seen: list[torch.device] = []

    class OnDevice(torch.nn.Module, ColourModel):
        def __init__(self) -> None:
            torch.nn.Module.__init__(self)
            ColourModel.__init__(self)
            self.anchor = torch.nn.Parameter(torch.zeros(1, device="meta"))

        def encode_image(self, pixels: torch.Tensor, normalize: bool = False) -> torch.Tensor:
            seen.append(pixels.device)  # (a meta tensor has no values: answer on the CPU)
            return torch.ones(len(pixels), 3)

    out = embed_images(OnDevice(), Squares(), batch_size=16, progress=False)
    assert set(seen) == {torch.device("meta")} and len(out.embeddings) == 30
