"""Image-text retrieval recall@k with several captions per image, computed in blocks.

``image_retrieval_recall@k``: each caption queries the images; a hit if its image is in the top k.
``text_retrieval_recall@k``: each image queries the captions; a hit if any of its captions is in
the top k. Scores are computed ``block`` queries at a time, so N x M never sits in memory at once.
Ties count against the query (a positive must score strictly above the k-th other key),
so a model that gives every key the same score gets recall 0, not 1.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _ranks(queries: torch.Tensor, keys: torch.Tensor, query_ids: torch.Tensor,
           key_ids: torch.Tensor, block: int) -> torch.Tensor:
    """For each query, how many other (non-positive) keys score at least as high as its best
    positive key: a tie ranks the positive below the other key, so a constant model scores 0.

    A key is positive for a query when their ids match (text_to_image ids on one side, image
    rows on the other). Queries without any positive get rank = number of keys.
    """
    ranks = torch.empty(queries.shape[0], dtype=torch.long)
    for start in range(0, queries.shape[0], block):
        scores = queries[start:start + block] @ keys.T  # b x M
        positive = query_ids[start:start + block, None] == key_ids[None, :]  # b x M
        best = scores.masked_fill(~positive, float("-inf")).amax(dim=1)  # b
        ranks[start:start + block] = ((scores >= best[:, None]) & ~positive).sum(dim=1)
        ranks[start:start + block][~positive.any(dim=1)] = keys.shape[0]
    return ranks


def evaluate(image_emb: torch.Tensor, text_emb: torch.Tensor, text_to_image: torch.Tensor,
             ks: tuple[int, ...] = (1, 5, 10), block: int = 1024) -> dict[str, float]:
    """Recall@k both ways; ``text_to_image[j]`` is the image row that caption j describes.

    Images without any caption are left out of text retrieval's denominator.
    """
    images = F.normalize(image_emb.float(), dim=-1)
    texts = F.normalize(text_emb.float(), dim=-1)
    text_to_image = text_to_image.long()
    image_rows = torch.arange(images.shape[0])
    image_ranks = _ranks(texts, images, text_to_image, image_rows, block)
    has_caption = torch.bincount(text_to_image, minlength=images.shape[0]) > 0
    text_ranks = _ranks(images[has_caption], texts, image_rows[has_caption], text_to_image, block)
    metrics = {f"image_retrieval_recall@{k}": (image_ranks < k).float().mean().item() for k in ks}
    metrics |= {f"text_retrieval_recall@{k}": (text_ranks < k).float().mean().item() for k in ks}
    return metrics
