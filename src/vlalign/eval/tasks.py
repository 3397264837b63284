"""Evaluation tasks on datasets: embed with a model, then score with a pure metric module.

Each task takes a model, the evaluation data and (for k-NN and the linear probe) the training
data, and returns a ``TaskResult``: CLIP_benchmark-named metrics plus the details a report draws
(confusion matrix, retrieval examples, segmentation masks). ``RECORD_TASKS`` names a task as
CLIP_benchmark's result records do, where it has the task under another name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlalign.data.base import Source
from vlalign.data.benchmarks.base import dataset_kind
from vlalign.data.benchmarks.karpathy import caption_list
from vlalign.data.templates import templates_for
from vlalign.errors import UserError
from vlalign.eval import knn, linear_probe, pairs, retrieval, segmentation, zeroshot
from vlalign.eval.features import CLIPLike, embed_images, embed_pil, embed_texts
from vlalign.store.reader import FeatureStore

EXAMPLES = 8  # retrieval queries and segmentation items kept for the report
WANTED = {"images": "an image dataset", "pairs": "a Winoground/MMVP-style pair set",
          "segmentation": "a segmentation set"}


@dataclass
class TaskResult:
    """Metrics (flat, CLIP_benchmark names), JSON details and arrays for the report."""

    metrics: dict[str, float]
    details: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Context:
    """How to compute embeddings: stores to reuse, batch size, progress bars, workers."""

    stores: Sequence[FeatureStore] = ()
    batch_size: int = 64
    progress: bool = True
    num_workers: int = 0  # image-decoding DataLoader workers (0: in the main process)


def _classifier(model: CLIPLike, class_names: list[str], dataset_name: str) -> torch.Tensor:
    templates = templates_for(dataset_name)
    return zeroshot.build_classifier(lambda texts: embed_texts(model, texts), class_names,
                                     templates)


def _require(dataset: Any, kind: str, task: str) -> None:
    if dataset_kind(dataset) != kind:
        raise UserError(f"{task} needs {WANTED[kind]}, got {getattr(dataset, 'name', dataset)!r}")


def _labelled(source: Any, what: str) -> Source:
    if dataset_kind(source) != "images" or not source.class_names:
        raise UserError(f"{what} needs a labelled image dataset (with class names), "
                        f"got {getattr(source, 'name', source)!r}")
    return source


def zeroshot_classification(model: CLIPLike, dataset: Any, train: Any,
                            ctx: Context) -> TaskResult:
    """Prompt-ensemble zero-shot classification as CLIP_benchmark runs it: the dataset's
    templates filled verbatim; acc1, mean_per_class_recall, and acc5 when there are >= 5 classes."""
    source = _labelled(dataset, "zeroshot_classification")
    images = embed_images(model, source, ctx.stores, ctx.batch_size, ctx.progress,
                          ctx.num_workers)
    classifier = _classifier(model, source.class_names, source.name)
    metrics = zeroshot.evaluate(images.embeddings, images.labels, classifier)
    confusion = zeroshot.confusion_matrix(images.embeddings, images.labels, classifier)
    return TaskResult(metrics | {"skipped": images.skipped},
                      {"class_names": source.class_names, "templates": templates_for(source.name)},
                      {"confusion": confusion.numpy()})


def _captions_of(source: Source, index: int) -> list[str]:
    """Every caption of item ``index``. A benchmark's ``captions`` (COCO/Flickr30k: all 5 or so
    per image) are used as they are, repeats included, as CLIP_benchmark does; a training-style
    source's RAW/REWRITTEN pair counts a caption it repeats once."""
    listed = caption_list(source, index)
    if listed is not None:
        return [t for t in listed if t and t.strip()]
    texts = source.load(index).captions.values()
    return list(dict.fromkeys(t.strip() for t in texts if t and t.strip()))


def zeroshot_retrieval(model: CLIPLike, dataset: Any, train: Any, ctx: Context) -> TaskResult:
    """Image-text retrieval recall@1/5/10 both ways, every caption of every image."""
    _require(dataset, "images", "zeroshot_retrieval")
    images = embed_images(model, dataset, ctx.stores, ctx.batch_size, ctx.progress,
                          ctx.num_workers)
    texts, owners = [], []
    for row, index in enumerate(images.indices.tolist()):
        captions = _captions_of(dataset, index)
        texts += captions
        owners += [row] * len(captions)
    text_emb = embed_texts(model, texts)
    owner = torch.tensor(owners)
    metrics = retrieval.evaluate(images.embeddings, text_emb, owner)
    queries = np.linspace(0, len(texts) - 1, EXAMPLES).astype(int).tolist()
    top_images = (text_emb[queries] @ images.embeddings.T).topk(
        min(5, len(images.indices)), dim=1).indices
    image_queries = np.linspace(0, len(images.indices) - 1, EXAMPLES).astype(int).tolist()
    top_texts = (images.embeddings[image_queries] @ text_emb.T).topk(
        min(5, len(texts)), dim=1).indices
    details = {
        "text_to_image": [{"caption": texts[q], "answer": int(images.indices[owners[q]]),
                           "top5": [int(images.indices[r]) for r in row]}
                          for q, row in zip(queries, top_images.tolist())],
        "image_to_text": [{"image": int(images.indices[q]),
                           "answers": [texts[j] for j, o in enumerate(owners) if o == q],
                           "top5": [texts[j] for j in row]}
                          for q, row in zip(image_queries, top_texts.tolist())],
    }
    return TaskResult(metrics | {"skipped": images.skipped}, details)


def _train_and_test(model: CLIPLike, dataset: Any, train: Any, ctx: Context, task: str):
    if train is None:
        raise UserError(f"{task} needs training data: pass --train-dataset SPEC")
    test_images = embed_images(model, _labelled(dataset, task), ctx.stores, ctx.batch_size,
                               ctx.progress, ctx.num_workers)
    train_images = embed_images(model, _labelled(train, task), ctx.stores, ctx.batch_size,
                                ctx.progress, ctx.num_workers)
    return train_images, test_images


def knn_classification(model: CLIPLike, dataset: Any, train: Any, ctx: Context) -> TaskResult:
    """DINO-style weighted k-NN on the model's image embeddings: knn_acc@{10,20,100,200}."""
    train_images, test_images = _train_and_test(model, dataset, train, ctx, "knn")
    metrics = knn.evaluate(train_images.embeddings, train_images.labels, test_images.embeddings,
                           test_images.labels)
    return TaskResult(metrics | {"train_size": len(train_images.indices)})


def linear_probe_classification(model: CLIPLike, dataset: Any, train: Any,
                                ctx: Context) -> TaskResult:
    """Logistic regression on frozen image embeddings with a weight-decay sweep: lp_acc1."""
    train_images, test_images = _train_and_test(model, dataset, train, ctx, "linear_probe")
    metrics = linear_probe.evaluate(train_images.embeddings, train_images.labels,
                                    test_images.embeddings, test_images.labels)
    metrics["weight_decay"] = metrics.pop("lp_weight_decay")  # CLIP_benchmark's key
    return TaskResult(metrics | {"train_size": len(train_images.indices)})


def _pair_scores(model: CLIPLike, dataset: Any, ctx: Context) -> tuple[torch.Tensor, list[str]]:
    _require(dataset, "pairs", "pair scoring")
    items = [dataset.load(i) for i in range(len(dataset))]
    images = embed_pil(model, [im for item in items for im in item.images], ctx.batch_size)
    texts = embed_texts(model, [c for item in items for c in item.captions])
    images, texts = images.view(len(items), 2, -1), texts.view(len(items), 2, -1)
    scores = torch.einsum("nid,njd->nij", images, texts)  # [n, image i, caption j]
    return scores, [item.tag for item in items]


# Winoground's scores under CLIP_benchmark's names (its task image_caption_selection).
WINOGROUND_NAMES = {"text_score": "text_acc", "image_score": "image_acc", "group_score": "acc"}


def winoground(model: CLIPLike, dataset: Any, train: Any, ctx: Context) -> TaskResult:
    """Winoground text, image and group scores, overall and per tag, named as CLIP_benchmark's
    image_caption_selection names them: ``text_acc``, ``image_acc``, ``acc`` (group), and
    ``<name>/<tag>`` per tag."""
    scores, tags = _pair_scores(model, dataset, ctx)
    metrics = {}
    for key, value in pairs.evaluate(scores, tags).items():
        score, slash, tag = key.partition("/")
        metrics[WINOGROUND_NAMES[score] + slash + tag] = value
    return TaskResult(metrics)


def mmvp(model: CLIPLike, dataset: Any, train: Any, ctx: Context) -> TaskResult:
    """MMVP-VLM: each statement must pick its own image; accuracy per visual pattern."""
    scores, tags = _pair_scores(model, dataset, ctx)
    return TaskResult(pairs.evaluate_mmvp(scores, tags))


def zeroshot_segmentation(model: CLIPLike, dataset: Any, train: Any, ctx: Context) -> TaskResult:
    """Open-vocabulary segmentation from per-patch embeddings: miou, pixel_acc."""
    _require(dataset, "segmentation", "zeroshot_segmentation")
    if not hasattr(model, "encode_image_tokens"):
        raise UserError("zeroshot_segmentation needs a model with encode_image_tokens")
    classifier = _classifier(model, dataset.class_names, dataset.name)
    accumulator = segmentation.ConfusionAccumulator(len(dataset.class_names))
    arrays: dict[str, np.ndarray] = {}
    shown = set(np.linspace(0, len(dataset) - 1, min(EXAMPLES, len(dataset))).astype(int).tolist())
    for start in range(0, len(dataset), ctx.batch_size):
        items = [dataset.load(i) for i in range(start, min(len(dataset), start + ctx.batch_size))]
        tokens, grid = model.encode_image_tokens([item.image for item in items])
        tokens = F.normalize(tokens.float(), dim=-1)
        for offset, (item, patch) in enumerate(zip(items, tokens)):
            height, width = item.mask.shape
            logits = segmentation.dense_logits(patch[None], grid, classifier, (height, width))
            predicted = logits[0].argmax(dim=0).numpy()
            accumulator.update(predicted, item.mask)
            if start + offset in shown:
                arrays[f"pred_{start + offset}"] = predicted.astype(np.int16)
                arrays[f"mask_{start + offset}"] = item.mask.astype(np.int16)
    details = {"class_names": dataset.class_names, "examples": sorted(shown)}
    return TaskResult(accumulator.metrics(), details, arrays)


Task = Callable[[CLIPLike, Any, Any, Context], TaskResult]
TASKS: dict[str, Task] = {
    "zeroshot_classification": zeroshot_classification,
    "zeroshot_retrieval": zeroshot_retrieval,
    "knn": knn_classification,
    "linear_probe": linear_probe_classification,
    "winoground": winoground,
    "mmvp": mmvp,
    "zeroshot_segmentation": zeroshot_segmentation,
}
# A task's name in result records where CLIP_benchmark names it otherwise (the rest: the same).
RECORD_TASKS = {"winoground": "image_caption_selection"}
