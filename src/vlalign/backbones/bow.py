"""``bundled:bow``: a hashed bag-of-words text encoder, the text-side control for probing.

Each lower-cased word (and, optionally, each pair of neighbouring words) is hashed with a fixed
blake2b into one of ``dim`` buckets with a +-1 sign; a caption is the sum over its words,
weighted by ``1 + log(count)``. It needs no fitting and no weights, so it is also the fastest
text encoder for tests.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter

import torch

from vlalign.backbones.base import BaseTextEncoder, reject_stage
from vlalign.spec import Option, Spec, validate_options

_WORD = re.compile(r"[a-z0-9]+")
OPTIONS = {"dim": Option(384, minimum=1), "bigrams": Option(True)}


class HashedBagOfWords(BaseTextEncoder):
    """Strings -> dim-d hashed word-count vectors (float32, not normalised)."""

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        reject_stage(spec)
        opts = validate_options(spec, OPTIONS)
        self.dim = opts["dim"]
        self.bigrams = opts["bigrams"]
        self.identity = f"bundled:bow?dim={self.dim}&bigrams={int(self.bigrams)}"
        self.to(device)

    def _bucket(self, term: str) -> tuple[int, float]:
        digest = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")
        return digest % self.dim, 1.0 if (digest >> 63) & 1 else -1.0

    def _encode_batch(self, texts: list[str]) -> torch.Tensor:
        """B x dim hashed term counts with sub-linear weighting."""
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            terms = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if self.bigrams else [])
            for term, count in Counter(terms).items():
                bucket, sign = self._bucket(term)
                out[row, bucket] += sign * (1.0 + math.log(count))
        return out
