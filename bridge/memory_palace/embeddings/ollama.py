"""Ollama embedder: batched `POST /api/embed`, timeouts, retries with backoff, per-model prefixes.

Uses only the standard library. The model keeps Ollama's default keep_alive: we never send 0,
which would unload the model after every call.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import socket
import threading
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from ..errors import ConfigError, EmbedderUnavailable
from .base import normalise

log = logging.getLogger(__name__)

#: Preference order when no model is configured (then: any model whose name contains "embed").
PREFERRED_MODELS = ("nomic-embed-text", "mxbai-embed-large")
#: Query instruction for "Instruct: …\nQuery: …" models (E5-mistral, SFR and the like).
INSTRUCTION = "Given a memory search query, retrieve relevant memories."
INSTRUCT_MARKERS = ("sfr-embedding", "e5-mistral", "gte-qwen", "qwen3-embedding", "linq-embed")
#: Context length (tokens) of common embedding models, used to cut overlong input client-side.
CONTEXT_TOKENS = {
    "nomic-embed-text-v2": 512,
    "nomic-embed-text": 8192,
    "mxbai-embed-large": 512,
    "snowflake-arctic-embed2": 8192,
    "snowflake-arctic-embed": 512,
    "all-minilm": 256,
    "bge-m3": 8192,
    "bge-large": 512,
}
DEFAULT_CONTEXT_TOKENS = 2048
CHARS_PER_TOKEN = 3  # conservative for English prose; the server still truncates the rest
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})


def base_name(model: str) -> str:
    """`hf.co/org/Name:tag` -> `name`; the lowercase family name used for per-model rules."""
    name = model.lower().rsplit("/", 1)[-1]
    return name.split(":", 1)[0]


def model_tag(model: str) -> str:
    name = model.lower().rsplit("/", 1)[-1]
    return name.split(":", 1)[1] if ":" in name else "latest"


def known_dim(model: str) -> int | None:
    """Output dimension of well-known models, or None (then it is probed once)."""
    name, tag = base_name(model), model_tag(model)
    if name.startswith("nomic-embed-text"):
        return 768
    if name.startswith("mxbai-embed-large"):
        return 1024
    if name.startswith("all-minilm"):
        return 384
    if name == "snowflake-arctic-embed2":
        return 1024
    if name == "snowflake-arctic-embed":
        size = tag.split("-", 1)[0]
        if size in ("latest", "l", "335m"):
            return 1024
        if size in ("m", "110m", "137m"):
            return 768
        if size in ("s", "xs", "22m", "33m"):
            return 384
    return None


def query_prefix(model: str, query: str) -> str:
    name = model.lower()
    if "nomic" in name:
        return f"search_query: {query}"
    if any(marker in name for marker in INSTRUCT_MARKERS):
        return f"Instruct: {INSTRUCTION}\nQuery: {query}"
    return query


def document_prefix(model: str, text: str) -> str:
    return f"search_document: {text}" if "nomic" in model.lower() else text


def max_chars(model: str) -> int:
    name = base_name(model)
    tokens = next(
        (n for key, n in CONTEXT_TOKENS.items() if name.startswith(key)), DEFAULT_CONTEXT_TOKENS
    )
    return tokens * CHARS_PER_TOKEN


class _HTTPFailure(Exception):
    """One failed attempt; `retry` says whether another attempt may help."""

    def __init__(self, message: str, *, status: int | None, retry: bool) -> None:
        super().__init__(message)
        self.status = status
        self.retry = retry


class OllamaEmbedder:
    """Embeds through an Ollama server. `model=None` picks an installed embedding model."""

    semantic = True

    def __init__(
        self,
        base_url: str = "http://localhost:11434",
        model: str | None = None,
        dim: int | None = None,
        *,
        timeout: float = 60.0,
        retries: int = 3,
        backoff: float = 0.25,
        batch_size: int = 64,
        keep_alive: str | int | None = None,
    ) -> None:
        if keep_alive is not None and str(keep_alive).strip() in ("0", "0s", "0m", "0h"):
            raise ConfigError(
                "keep_alive 0 would unload the Ollama model after every call; "
                "leave it unset (Ollama's default) or use e.g. '30m'"
            )
        base_url = (base_url or "http://localhost:11434").rstrip("/")
        self.base_url = base_url if "://" in base_url else f"http://{base_url}"
        self._model = model or None
        self._dim = dim
        self._dim_source = "embedding_dimension" if dim else ""
        self.timeout = timeout
        self.retries = max(0, retries)
        self.backoff = backoff
        self.batch_size = max(1, batch_size)
        self.keep_alive = keep_alive
        self._lock = threading.Lock()
        host = urlsplit(self.base_url).hostname or ""
        # A local Ollama must not be sent through an HTTP(S)_PROXY from the environment.
        local = host in ("localhost", "::1") or host.startswith("127.")
        self._opener = urllib.request.build_opener(
            *([urllib.request.ProxyHandler({})] if local else [])
        )

    # -- identity (lazy: may need the server) --------------------------------------------------

    @property
    def model(self) -> str:
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._detect_model()
        return self._model

    @property
    def id(self) -> str:
        model = self.model
        if model.endswith(":latest"):
            model = model[: -len(":latest")]
        return f"ollama:{model}"

    @property
    def dim(self) -> int:
        if self._dim is None:
            dim = known_dim(self.model)
            if dim is None:
                dim = int(self._embed_raw(["dimension probe"]).shape[1])
            else:
                self._dim_source = "the known size for this model"
            self._dim = dim
        return self._dim

    # -- HTTP ------------------------------------------------------------------------------------

    def _unreachable(self, detail: str) -> EmbedderUnavailable:
        return EmbedderUnavailable(
            f"Ollama at {self.base_url} is not reachable ({detail}): start it with "
            "`ollama serve`, fix ollama_url / OLLAMA_HOST, or set embedder to local",
            url=self.base_url,
        )

    def _once(self, method: str, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                detail = json.loads(detail).get("error", detail)
            raise _HTTPFailure(
                str(detail).strip() or exc.reason, status=exc.code, retry=exc.code in RETRY_STATUSES
            ) from exc
        except TimeoutError as exc:
            raise _HTTPFailure(f"no answer within {timeout:g} s", status=None, retry=True) from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, (TimeoutError, socket.timeout)):
                raise _HTTPFailure(
                    f"no answer within {timeout:g} s", status=None, retry=True
                ) from exc
            raise _HTTPFailure(str(reason), status=None, retry=True) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise _HTTPFailure(
                f"answer is not JSON: {raw[:80]!r}", status=200, retry=False
            ) from exc

    def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        timeout: float | None = None,
    ) -> Any:
        """One call with retries (connection errors, timeouts, 5xx, 429) and exponential backoff."""
        timeout = self.timeout if timeout is None else timeout
        for attempt in range(self.retries + 1):
            try:
                return self._once(method, path, body, timeout)
            except _HTTPFailure as failure:
                if not failure.retry or attempt == self.retries:
                    raise self._error(failure, path, attempt + 1) from failure
                delay = self.backoff * (2**attempt)
                log.warning(
                    "Ollama %s failed (%s); retry %d/%d in %.2f s",
                    path,
                    failure,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # the loop always returns or raises

    def _error(self, failure: _HTTPFailure, path: str, attempts: int) -> EmbedderUnavailable:
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        if failure.status is None:
            return self._unreachable(f"{failure}{tries}")
        model = self._model or "?"
        if failure.status == 404 and path == "/api/embed":
            return EmbedderUnavailable(
                f"Ollama at {self.base_url} has no model {model!r} ({failure}): run "
                f"`ollama pull {model}` or set embedding_model to an installed model",
                url=self.base_url,
                model=model,
                status=404,
            )
        if "context length" in str(failure).lower():
            return EmbedderUnavailable(
                f"Ollama model {model!r} rejected an input longer than its context ({failure}); "
                "shorten the memory or use a model with a longer context",
                url=self.base_url,
                model=model,
                status=failure.status,
            )
        return EmbedderUnavailable(
            f"Ollama at {self.base_url} answered {path} with HTTP {failure.status}{tries}: "
            f"{failure}; check the Ollama server log, or set embedder to local",
            url=self.base_url,
            model=model,
            status=failure.status,
        )

    # -- model detection -------------------------------------------------------------------------

    def _detect_model(self) -> str:
        tags = self._request("GET", "/api/tags", timeout=min(self.timeout, 10.0))
        names = [
            m.get("name") or m.get("model") for m in tags.get("models", []) if isinstance(m, dict)
        ]
        names = [n for n in names if n]
        for wanted in PREFERRED_MODELS:
            hits = [n for n in names if base_name(n) == wanted]
            if hits:
                return next((n for n in hits if model_tag(n) == "latest"), sorted(hits)[0])
        embedders = sorted(n for n in names if "embed" in n.lower())
        if embedders:
            return embedders[0]
        raise EmbedderUnavailable(
            f"Ollama at {self.base_url} has no embedding model (installed: "
            f"{', '.join(names) or 'none'}): run `ollama pull nomic-embed-text`, set "
            "embedding_model, or set embedder to local",
            url=self.base_url,
        )

    # -- embedding -------------------------------------------------------------------------------

    def _embed_raw(self, inputs: list[str]) -> np.ndarray:
        model = self.model
        limit = max_chars(model)
        out: list[np.ndarray] = []
        for start in range(0, len(inputs), self.batch_size):
            batch = [t[:limit] for t in inputs[start : start + self.batch_size]]
            body: dict[str, Any] = {"model": model, "input": batch, "truncate": True}
            if self.keep_alive is not None:
                body["keep_alive"] = self.keep_alive
            answer = self._request("POST", "/api/embed", body)
            vectors = answer.get("embeddings") if isinstance(answer, dict) else None
            if not isinstance(vectors, list) or len(vectors) != len(batch):
                got = len(vectors) if isinstance(vectors, list) else "no"
                raise EmbedderUnavailable(
                    f"Ollama at {self.base_url} returned {got} embeddings for {len(batch)} "
                    f"inputs with model {model!r}; is it an embedding model? Use e.g. "
                    "nomic-embed-text, or set embedder to local",
                    url=self.base_url,
                    model=model,
                )
            try:
                out.append(np.asarray(vectors, dtype=np.float32).reshape(len(batch), -1))
            except ValueError as exc:
                raise EmbedderUnavailable(
                    f"Ollama model {model!r} returned vectors of different lengths; "
                    "check the model, or set embedder to local",
                    model=model,
                ) from exc
        matrix = np.concatenate(out) if out else np.zeros((0, self._dim or 0), np.float32)
        if self._dim is not None and matrix.shape[0] and matrix.shape[1] != self._dim:
            raise EmbedderUnavailable(
                f"Ollama model {model!r} returns {matrix.shape[1]}-d vectors but "
                f"{self._dim_source} is {self._dim}; set embedding_dimension to "
                f"{matrix.shape[1]} (then run memory_reembed) or use another model",
                model=model,
                expected=self._dim,
                actual=int(matrix.shape[1]),
            )
        return normalise(matrix)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        model = self.model
        return self._embed_raw([document_prefix(model, str(t)) for t in texts])

    def embed_query(self, text: str) -> np.ndarray:
        return self._embed_raw([query_prefix(self.model, str(text))])[0]

    def token_limit(self, text: str) -> int | None:
        """Inputs are cut at the model's context (estimated at CHARS_PER_TOKEN per token)."""
        limit = max_chars(self.model)
        return limit // CHARS_PER_TOKEN if len(document_prefix(self.model, text)) > limit else None


__all__ = ["OllamaEmbedder", "document_prefix", "known_dim", "query_prefix"]
