"""A deterministic, dependency-free embedder for tests and benchmarks.

Feature hashing of words and character 3-grams into signed buckets, L2-normalised:
texts that share words or word pieces get closer vectors. Not a semantic model.
"""

from __future__ import annotations

import re
import zlib

import numpy as np

from .base import normalise

TOKEN_RE = re.compile(r"\w+", re.UNICODE)


class HashingEmbedder:
    semantic = False

    def __init__(self, dim: int = 384) -> None:
        self.dim = dim
        self.id = f"hash:v1-{dim}"

    def _features(self, text: str) -> list[tuple[int, float]]:
        feats: list[tuple[int, float]] = []
        for word in TOKEN_RE.findall(text.lower()):
            feats.append((zlib.crc32(word.encode()), 1.0))
            padded = f"#{word}#"
            for i in range(len(padded) - 2):
                feats.append((zlib.crc32(b"3" + padded[i : i + 3].encode()), 0.35))
        return feats

    def _embed(self, text: str) -> np.ndarray:
        vec = np.zeros(self.dim, dtype=np.float32)
        for h, weight in self._features(text):
            vec[h % self.dim] += weight if (h >> 16) & 1 else -weight
        return vec

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return normalise(np.stack([self._embed(t) for t in texts]))

    def token_limit(self, text: str) -> int | None:
        return None  # every word is hashed

    def embed_query(self, text: str) -> np.ndarray:
        return normalise(self._embed(text)[None, :])[0]
