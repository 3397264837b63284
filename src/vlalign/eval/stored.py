"""Evaluate heads on a feature store: zero-shot (stored class prompts) and retrieval.

Works on anything with ``encode_image_features`` / ``encode_text_features`` returning
normalised embeddings (a SAIL module during training, or a loaded model's feature heads), so a
run's held-out numbers need no backbone forward.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from vlalign.eval import retrieval, zeroshot
from vlalign.store.reader import FeatureStore

Embed = Callable[[torch.Tensor], torch.Tensor]


class FeatureHeads(Protocol):
    def encode_image_features(self, features: torch.Tensor) -> torch.Tensor: ...

    def encode_text_features(self, features: torch.Tensor) -> torch.Tensor: ...


def _in_chunks(embed: Embed, features: np.ndarray, chunk: int = 8192) -> torch.Tensor:
    with torch.inference_mode():
        return torch.cat([embed(torch.from_numpy(np.asarray(features[i:i + chunk], np.float32)))
                          for i in range(0, len(features), chunk)])


def has_distinct_captions(store: FeatureStore) -> bool:
    """Retrieval is meaningful only when captions tell images apart (not class templates)."""
    raw = {row[0] for row in store.captions}
    return len(raw) > 0.5 * len(store)


def evaluate_store(store: FeatureStore, heads: FeatureHeads) -> dict[str, float]:
    """Zero-shot metrics if the store has class prompts; retrieval metrics if captions differ."""
    rows = np.arange(len(store))
    images = _in_chunks(heads.encode_image_features, store.images(rows))
    metrics: dict[str, float] = {}
    prompts = store.class_prompts()
    if prompts is not None:
        classes, templates, dim = prompts.shape
        emb = _in_chunks(heads.encode_text_features, prompts.reshape(-1, dim))
        emb = torch.nn.functional.normalize(emb.view(classes, templates, -1).mean(1), dim=-1)
        metrics |= zeroshot.evaluate(images, torch.from_numpy(store.labels), emb)
    if has_distinct_captions(store):
        texts = store.texts(rows)  # n x K x D
        kinds = texts.shape[1]
        text_emb = _in_chunks(heads.encode_text_features, texts.reshape(-1, texts.shape[-1]))
        owner = torch.from_numpy(np.repeat(rows, kinds))
        metrics |= retrieval.evaluate(images, text_emb, owner)
    return metrics


def store_evaluator(paths: list[str]) -> Callable[[FeatureHeads, int], dict[str, float]]:
    """A training-time callback: evaluate each held-out store, keys prefixed by dataset name."""
    stores = [FeatureStore(p) for p in paths]

    def evaluate(heads: FeatureHeads, step: int) -> dict[str, float]:
        was_training = getattr(heads, "training", False)
        if hasattr(heads, "eval"):
            heads.eval()
        results = {}
        for store in stores:
            name = store.manifest["dataset"]["name"]
            results |= {f"{name}/{k}": v for k, v in evaluate_store(store, heads).items()}
        if was_training:
            heads.train()
        return results

    return evaluate
