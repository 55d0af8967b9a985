"""The embedder protocol. Vectors are float32, L2-normalised, shape (n, dim)."""

from __future__ import annotations

from typing import Protocol

import numpy as np


class Embedder(Protocol):
    #: Stable identity stored on every row, e.g. "local:all-MiniLM-L6-v2-int8".
    id: str
    #: Vector dimension; known without loading the model.
    dim: int
    #: True for a language model; False when vectors only encode surface text (the hashing
    #: embedder), so recall leans on keyword relevance instead.
    semantic: bool

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed memory texts for storage. Raises EmbedderUnavailable on failure."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """Embed one search query (1-d array). Raises EmbedderUnavailable on failure."""
        ...

    def token_limit(self, text: str) -> int | None:
        """The number of tokens embedded when `text` is longer than the model reads (the
        rest is not in the vector), else None."""
        ...


def normalise(m: np.ndarray) -> np.ndarray:
    m = np.asarray(m, dtype=np.float32)
    norms = np.linalg.norm(m, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return m / norms
