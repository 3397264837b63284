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

from vlalign.backbones.spec import Spec
from vlalign.errors import UserError

_WORD = re.compile(r"[a-z0-9]+")


class HashedBagOfWords:
    """Strings -> dim-d hashed word-count vectors (float32, not normalised)."""

    def __init__(self, spec: Spec, device: str = "cpu") -> None:
        unknown = sorted(set(spec.options) - {"dim", "bigrams"})
        if unknown or spec.stage:
            raise UserError(f"spec {spec.text!r}: bundled:bow takes options dim, bigrams only")
        try:
            self.dim = int(spec.options.get("dim", "384"))
        except ValueError:
            self.dim = 0
        if self.dim <= 0:
            raise UserError(f"spec {spec.text!r}: dim must be a positive integer")
        self.bigrams = spec.options.get("bigrams", "1") not in ("0", "false", "no")
        self.identity = f"bundled:bow?dim={self.dim}&bigrams={int(self.bigrams)}"
        self.device = torch.device(device)

    def to(self, device: torch.device | str) -> HashedBagOfWords:
        self.device = torch.device(device)
        return self

    def _bucket(self, term: str) -> tuple[int, float]:
        digest = int.from_bytes(hashlib.blake2b(term.encode(), digest_size=8).digest(), "little")
        return digest % self.dim, 1.0 if (digest >> 63) & 1 else -1.0

    def encode(self, texts: list[str]) -> torch.Tensor:
        """B x dim hashed term counts with sub-linear weighting."""
        out = torch.zeros(len(texts), self.dim)
        for row, text in enumerate(texts):
            words = _WORD.findall(text.lower())
            terms = words + ([f"{a} {b}" for a, b in zip(words, words[1:])] if self.bigrams else [])
            for term, count in Counter(terms).items():
                bucket, sign = self._bucket(term)
                out[row, bucket] += sign * (1.0 + math.log(count))
        return out.to(self.device)
