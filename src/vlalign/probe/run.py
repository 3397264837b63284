"""Run a probe grid: encode each side once, train a linear probe per pair, measure, correlate.

For every vision encoder V and text encoder T: image features of the pair data come from a store
encoded by V (any text encoder), caption features from a store encoded by T (any vision
encoder); the two are composed into one (V, T) store without copying, linear heads are trained
on it with the sigmoid loss, and retrieval on the held-out pairs is the alignment score
(``alignment`` = mean of recall@10 both ways, the paper's metric). Each V also gets k-NN and
linear-probe accuracy on labelled data; each T a paraphrase score (does it put an emoji's name
and its descriptive sentence closest together?). Everything is resumable: stores and trained
probes found in OUT are reused.
"""

from __future__ import annotations

import copy
import gc
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlalign.backbones import create_text_encoder, create_vision_encoder
from vlalign.config import to_dict
from vlalign.data.base import RAW, REWRITTEN
from vlalign.data.benchmarks.karpathy import caption_list
from vlalign.data.benchmarks.registry import create_benchmark
from vlalign.errors import UserError
from vlalign.eval import knn, linear_probe
from vlalign.eval.stored import evaluate_store
from vlalign.probe import stats
from vlalign.probe.config import ProbeConfig
from vlalign.sail.artifact import AlignmentHeads
from vlalign.sail.train import train_sail
from vlalign.store import EncodeOptions, FeatureStore, encode_store
from vlalign.store.compose import compose_store
from vlalign.store.layout import transform_difference
from vlalign.utils.files import atomic_write_json, read_json

log = logging.getLogger(__name__)
KNN_K = 20  # the k-NN accuracy the correlations use (all four are reported)


def slug(spec: str) -> str:
    """A file-name-safe version of a spec."""
    return re.sub(r"[^A-Za-z0-9.-]+", "_", spec).strip("_")


def caption_kinds(source: Any) -> list[str]:
    """The caption kinds a probe stores for ``source``: RAW and REWRITTEN for training-style
    data; for a retrieval benchmark (COCO, Flickr30k: ``captions(i)``, examples captioned
    "0", "1", ...) one kind per caption, as many as every image has (5: the few COCO images with
    6 or 7 keep their first 5, as the official SAIL COCO evaluation does)."""
    if len(source) == 0 or caption_list(source, 0) is None:
        return [RAW, REWRITTEN]
    counts = [len(caption_list(source, i) or ()) for i in range(len(source))]
    fewest = min((n for n in counts if n), default=1)  # captionless images are bad items
    return [str(k) for k in range(fewest)]


class StoreFinder:
    """Finds or builds the one-sided stores a probe needs, under ``root``."""

    def __init__(self, root: Path, extra: Sequence[FeatureStore], data_root: str | Path,
                 progress: bool) -> None:
        self.root, self.data_root, self.progress = root, data_root, progress
        self.known = list(extra)
        for manifest in sorted(root.glob("*/*/manifest.json")):
            if read_json(manifest).get("status") == "complete":  # partial: resumed by get()
                self.known.append(FeatureStore(manifest.parent))

    def _find(self, fingerprint: str, side: int, identity: str,
              transform: dict[str, Any]) -> FeatureStore | None:
        """A known store of that data and encoder; for images also of that image transform
        (a store from before vlalign followed each library's transform is not reused)."""
        for store in self.known:
            if (store.manifest["dataset"]["fingerprint"] == fingerprint
                    and store.backbones[side] == identity
                    and (side == 1 or transform_difference(store.transform, transform) is None)
                    and "composed_from" not in store.manifest):
                return store
        return None

    def get(self, data: str, vision_spec: str, text_spec: str, side: int) -> FeatureStore:
        """A store of ``data`` whose ``side`` (0 image, 1 text) was encoded by that spec."""
        source = create_benchmark(data, self.data_root)  # coco:, imagenet:, ... or a source
        vision = create_vision_encoder(vision_spec)
        text = create_text_encoder(text_spec)
        wanted = (vision, text)[side].identity
        found = self._find(source.fingerprint, side, wanted, vision.preprocess.to_dict())
        if found is not None:
            return found
        folder = "images" if side == 0 else "texts"
        own = vision_spec if side == 0 else text_spec
        out = self.root / folder / f"{slug(own)}__{slug(data)}"
        encode_store(source, vision, text, out, kinds=caption_kinds(source),
                     specs=(vision_spec, text_spec), options=EncodeOptions(progress=self.progress))
        store = FeatureStore(out)
        self.known.append(store)
        return store


def _features(store: FeatureStore) -> tuple[torch.Tensor, torch.Tensor]:
    rows = np.arange(len(store))
    return (torch.from_numpy(store.images(rows).astype(np.float32)),
            torch.from_numpy(store.labels))


def vision_quality(train: FeatureStore, test: FeatureStore) -> dict[str, float]:
    """k-NN (k = 10, 20, 100, 200) and linear-probe accuracy of frozen pooled features."""
    (x_train, y_train), (x_test, y_test) = _features(train), _features(test)
    metrics = knn.evaluate(x_train, y_train, x_test, y_test)
    return metrics | linear_probe.evaluate(x_train, y_train, x_test, y_test)


def cached_quality(path: Path, train: FeatureStore, test: FeatureStore) -> dict[str, float]:
    """``vision_quality`` of these stores, computed once: the linear probe's weight-decay sweep
    is the slowest part of a rerun. The cache is keyed by the stores' identities."""
    key = {"train": train.manifest["vision"]["identity"], "test": test.manifest["vision"][
        "identity"], "data": [s.manifest["dataset"]["fingerprint"] for s in (train, test)]}
    if path.exists():
        cached = read_json(path)
        if cached.get("key") == key:
            return cached["metrics"]
    metrics = vision_quality(train, test)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, {"key": key, "metrics": metrics})
    return metrics


def text_quality(store: FeatureStore) -> dict[str, float]:
    """Paraphrase recall@1: each emoji name must find its own descriptive sentence among all
    sentences (and back), averaged; needs two caption kinds."""
    if len(store.caption_kinds) < 2:
        return {}
    texts = torch.from_numpy(store.texts(np.arange(len(store))).astype(np.float32))
    names, sentences = F.normalize(texts[:, 0], dim=-1), F.normalize(texts[:, 1], dim=-1)
    scores = names @ sentences.T
    truth = torch.arange(len(scores))
    forward = (scores.argmax(dim=1) == truth).float().mean().item()
    backward = (scores.argmax(dim=0) == truth).float().mean().item()
    return {"paraphrase_r@1": (forward + backward) / 2}


def probe_pair(train: FeatureStore, test: FeatureStore, run: Path,
               config: ProbeConfig, progress: bool) -> dict[str, float]:
    """Train linear heads on the composed ``train`` store; retrieval metrics on ``test``."""
    if not (run / "heads.json").exists():
        recipe = copy.deepcopy(config.sail)
        recipe.train_stores = [str(train.path)]
        train_sail(recipe, run, resume=(run / "latest.json").exists(), progress=progress)
    metrics = evaluate_store(test, AlignmentHeads.from_pretrained(run))
    retrieval = {k: v for k, v in metrics.items() if "retrieval" in k}
    retrieval["alignment"] = (retrieval["image_retrieval_recall@10"]
                              + retrieval["text_retrieval_recall@10"]) / 2
    return retrieval


def _label(spec: str) -> str:
    return spec.split(":", 1)[0]


def correlations(pairs: list[dict[str, Any]], vision: dict[str, dict[str, float]],
                 seed: int) -> dict[str, Any]:
    """Alignment against k-NN and linear-probe accuracy across vision encoders, per text encoder
    and for the mean over text encoders, per labelled set."""
    texts = list(dict.fromkeys(p["text"] for p in pairs))
    groups = {t: {p["vision"]: p["alignment"] for p in pairs if p["text"] == t} for t in texts}
    specs = list(vision)
    groups["mean over text encoders"] = {
        v: float(np.mean([groups[t][v] for t in texts])) for v in specs}
    labelled = sorted({k.split("/")[0] for m in vision.values() for k in m})
    out: dict[str, Any] = {}
    for name, scores in groups.items():
        x = np.array([scores[v] for v in specs])
        for data in labelled:
            knn_acc = np.array([vision[v][f"{data}/knn_acc@{KNN_K}"] for v in specs])
            lp_acc = np.array([vision[v][f"{data}/lp_acc1"] for v in specs])
            out[f"{name} | {data}"] = {
                "knn": stats.correlation(x, knn_acc, seed),
                "linear_probe": stats.correlation(x, lp_acc, seed),
                "knn_minus_lp_pearson": stats.paired_difference(x, knn_acc, lp_acc,
                                                                stats.pearson, seed),
            }
    return out


def run_probe(config: ProbeConfig, out: Path, stores: Sequence[FeatureStore] = (),
              data_root: str | Path = "data", progress: bool = True) -> dict[str, Any]:
    """The whole grid into ``out``; returns (and writes ``out/probe.json``) the results."""
    if not config.vision or not config.text:
        raise UserError("a probe needs at least one vision and one text encoder")
    if len(config.labelled_train) != len(config.labelled_test):
        raise UserError("labelled_train and labelled_test must list the same number of sets")
    out.mkdir(parents=True, exist_ok=True)
    finder = StoreFinder(out / "stores", list(stores), data_root, progress)
    vision: dict[str, dict[str, float]] = {}
    image_side: dict[tuple[str, str], FeatureStore] = {}
    for spec in config.vision:
        for data in (config.train_data, config.test_data):
            image_side[spec, data] = finder.get(data, spec, config.image_side_text, 0)
        vision[spec] = {}
        for train, test in zip(config.labelled_train, config.labelled_test):
            quality = cached_quality(
                out / "quality" / f"{slug(spec)}__{slug(train)}__{slug(test)}.json",
                finder.get(train, spec, config.image_side_text, 0),
                finder.get(test, spec, config.image_side_text, 0))
            vision[spec] |= {f"{_label(test)}/{k}": v for k, v in quality.items()}
        gc.collect()
    text: dict[str, dict[str, float]] = {}
    text_side: dict[tuple[str, str], FeatureStore] = {}
    for spec in config.text:
        for data in (config.train_data, config.test_data):
            text_side[spec, data] = finder.get(data, config.text_side_vision, spec, 1)
        text[spec] = text_quality(text_side[spec, config.test_data])
    pairs = []
    for v in config.vision:
        for t in config.text:
            name = f"{slug(v)}__{slug(t)}"
            composed = {data: compose_store(image_side[v, data], text_side[t, data],
                                            out / "stores" / "pairs" / f"{name}__{slug(data)}")
                        for data in (config.train_data, config.test_data)}
            metrics = probe_pair(composed[config.train_data], composed[config.test_data],
                                 out / "runs" / name, config, progress)
            log.info("probe %s + %s: alignment %.4f", v, t, metrics["alignment"])
            pairs.append({"vision": v, "text": t, **metrics})
    result = {"config": to_dict(config), "pairs": pairs, "vision": vision, "text": text,
              "correlations": correlations(pairs, vision, config.bootstrap_seed)
              if len(config.vision) >= 3 else {}}
    atomic_write_json(out / "probe.json", result)
    return result
