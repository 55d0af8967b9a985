"""Embedders: local ONNX MiniLM (default), Ollama, and a hashing embedder for tests."""

from __future__ import annotations

from ..config import Settings
from .base import Embedder, normalise
from .hashing import HashingEmbedder


def create_embedder(settings: Settings) -> Embedder:
    """The embedder the settings ask for. Cheap: models load on first use."""
    if settings.embedder == "hash":
        return HashingEmbedder(settings.embedding_dimension or 384)
    if settings.embedder == "ollama":
        from .ollama import OllamaEmbedder

        return OllamaEmbedder(
            settings.ollama_url, settings.embedding_model, settings.embedding_dimension
        )
    from .local import LocalEmbedder

    return LocalEmbedder()


__all__ = ["Embedder", "HashingEmbedder", "create_embedder", "normalise"]
