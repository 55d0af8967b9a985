"""A small local HTTP server that speaks Ollama's /api/embed and /api/tags, for tests.

Vectors come from HashingEmbedder, so they are deterministic. Tests read `requests` and inject
failures with `fail()`, `drop()` and `delay`. Use the `fake_ollama` fixture (import it).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from memory_palace.embeddings import HashingEmbedder

#: Dimensions the fake gives well-known models; anything else gets DEFAULT_DIM.
MODEL_DIMS = {"nomic-embed-text": 768, "mxbai-embed-large": 1024, "all-minilm": 384}
DEFAULT_DIM = 256


@dataclass
class Recorded:
    method: str
    path: str
    body: Any


@dataclass
class _Failure:
    path: str
    status: int | None  # None = close the connection without answering
    error: str


@dataclass
class FakeOllama:
    """An Ollama look-alike on 127.0.0.1:<free port>. Start with `with FakeOllama() as s:`."""

    models: list[str] = field(default_factory=lambda: ["nomic-embed-text:latest"])
    dims: dict[str, int] = field(default_factory=dict)
    #: Context length in whitespace-separated "tokens", per model family (default 2048).
    context_tokens: dict[str, int] = field(default_factory=dict)
    #: Seconds to wait before answering (server side), e.g. to trigger client timeouts.
    delay: float = 0.0
    requests: list[Recorded] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: list[_Failure] = []
        self._closing = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        assert self._server is not None, "start the server first"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeOllama:
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="fake-ollama", daemon=True
        )
        self._thread.start()
        return self

    def close(self) -> None:
        self._closing.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> FakeOllama:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fail(
        self, status: int, times: int = 1, error: str = "injected failure", path: str = "/api/embed"
    ) -> None:
        """Answer the next `times` requests to `path` with HTTP `status` and {"error": error}."""
        with self._lock:
            self._failures.extend(_Failure(path, status, error) for _ in range(times))

    def drop(self, times: int = 1, path: str = "/api/embed") -> None:
        """Close the next `times` connections to `path` without an answer."""
        with self._lock:
            self._failures.extend(_Failure(path, None, "") for _ in range(times))

    def calls(self, path: str = "/api/embed") -> list[Any]:
        """Bodies of the requests received on `path`, oldest first."""
        with self._lock:
            return [r.body for r in self.requests if r.path == path]

    # -- behaviour -----------------------------------------------------------------------------

    def _take_failure(self, path: str) -> _Failure | None:
        with self._lock:
            for i, failure in enumerate(self._failures):
                if failure.path == path:
                    return self._failures.pop(i)
        return None

    def _find_model(self, name: str) -> str | None:
        wanted = name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"
        return next((m for m in self.models if m in (wanted, name)), None)

    @staticmethod
    def _family(model: str) -> str:
        return model.rsplit("/", 1)[-1].split(":", 1)[0].lower()

    def dim_of(self, model: str) -> int:
        family = self._family(model)
        return self.dims.get(model, self.dims.get(family, MODEL_DIMS.get(family, DEFAULT_DIM)))

    def tags(self) -> dict[str, Any]:
        return {
            "models": [
                {
                    "name": m,
                    "model": m,
                    "modified_at": "2025-01-01T00:00:00Z",
                    "size": 274302450,
                    "digest": hashlib.sha256(m.encode()).hexdigest(),
                    "details": {
                        "parent_model": "",
                        "format": "gguf",
                        "family": self._family(m),
                        "families": [self._family(m)],
                        "parameter_size": "137M",
                        "quantization_level": "F16",
                    },
                }
                for m in self.models
            ]
        }

    def embed(self, body: Any) -> tuple[int, dict[str, Any]]:
        if not isinstance(body, dict) or not body.get("model"):
            return 400, {"error": "model is required"}
        model = self._find_model(str(body["model"]))
        if model is None:
            return 404, {"error": f'model "{body["model"]}" not found, try pulling it first'}
        inputs = body.get("input", [])
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(t, str) for t in inputs):
            return 400, {"error": "invalid input type"}
        limit = self.context_tokens.get(self._family(model), 2048)
        truncate = body.get("truncate", True)
        cut: list[str] = []
        for text in inputs:
            words = text.split()
            if len(words) > limit:
                if not truncate:
                    return 400, {"error": "the input length exceeds the context length"}
                text = " ".join(words[:limit])
            cut.append(text)
        vectors = HashingEmbedder(self.dim_of(model)).embed_documents(cut)
        return 200, {
            "model": body["model"],
            "embeddings": vectors.tolist(),
            "total_duration": 1000,
            "load_duration": 10,
            "prompt_eval_count": sum(len(t.split()) for t in cut),
        }


def _handler_for(fake: FakeOllama) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
            pass

        def _answer(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                self.close_connection = True

        def _handle(self, method: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode("utf-8", "replace")
            with fake._lock:
                fake.requests.append(Recorded(method, self.path, body))
            if fake.delay and fake._closing.wait(fake.delay):
                self.close_connection = True  # shutting down: the client is long gone
                return
            failure = fake._take_failure(self.path)
            if failure is not None:
                if failure.status is None:
                    self.close_connection = True
                    self.connection.close()
                    return
                self._answer(failure.status, {"error": failure.error})
                return
            if method == "GET" and self.path == "/api/tags":
                self._answer(200, fake.tags())
            elif method == "GET" and self.path == "/api/version":
                self._answer(200, {"version": "0.9.0"})
            elif method == "POST" and self.path == "/api/embed":
                self._answer(*fake.embed(body))
            else:
                self._answer(404, {"error": "404 page not found"})

        def do_GET(self) -> None:
            self._handle("GET")

        def do_POST(self) -> None:
            self._handle("POST")

    return Handler


@pytest.fixture
def fake_ollama() -> Iterator[FakeOllama]:
    """A running fake Ollama with nomic-embed-text installed; change `.models` as needed."""
    with FakeOllama() as server:
        yield server
