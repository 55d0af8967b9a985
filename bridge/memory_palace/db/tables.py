"""Every table, declared once. DDL for both backends, INSERT/SELECT column lists, the value
codecs of export/import and of the SQLite-to-PostgreSQL migration all derive from these specs.

A column's `kind` is backend-neutral; each backend maps it to a storage type and a codec:

    kind     SQLite            PostgreSQL          Python value in services
    id       INTEGER PK AUTO   BIGSERIAL PK        int
    ref      INTEGER (FK)      BIGINT (FK)         int
    int      INTEGER           INTEGER             int
    float    REAL              DOUBLE PRECISION    float
    bool     INTEGER 0/1       BOOLEAN             bool
    text     TEXT              TEXT                str
    time     TEXT (ISO UTC)    TIMESTAMPTZ         datetime (aware, UTC)
    strings  TEXT (JSON)       TEXT[]              list[str]
    json     TEXT (JSON)       JSONB               any JSON value
    vector   BLOB (f32 LE)     vector(dim)         numpy float32 array

Adding a column is one line here: `schema.migrate` adds missing columns to existing databases.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

KINDS = ("id", "ref", "int", "float", "bool", "text", "time", "strings", "json", "vector")
NOW = object()  # default: the current time


@dataclass(frozen=True)
class Column:
    name: str
    kind: str
    nullable: bool = True
    default: Any = None
    references: str | None = None  # "table(column)"; ON DELETE CASCADE

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name}: unknown kind {self.kind!r}")


@dataclass(frozen=True)
class Index:
    name: str
    columns: tuple[str, ...]
    where: str | None = None  # a partial index's condition (same SQL on both backends)


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...] = ("id",)  # identifies a row (primary key)
    unique: tuple[tuple[str, ...], ...] = ()
    checks: tuple[str, ...] = ()
    indexes: tuple[Index, ...] = ()
    # A column whose value differs, for the same key, when two copies of a row conflict.
    compare: str | None = None
    record: str | None = None  # the record type in JSONL exports; None: not exported/migrated

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def exported(self) -> bool:
        return self.record is not None

    @property
    def serial(self) -> bool:
        return any(c.kind == "id" for c in self.columns)

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    def kinds(self, names: tuple[str, ...] | list[str] | None = None) -> dict[str, str]:
        cols = self.columns if names is None else [self.column(n) for n in names]
        return {c.name: c.kind for c in cols}


def _c(name: str, kind: str, **kw: Any) -> Column:
    return Column(name, kind, **kw)


MEMORIES = Table(
    "memories",
    (
        _c("id", "id"),
        _c("created_at", "time", nullable=False, default=NOW),
        _c("updated_at", "time"),
        _c("last_accessed_at", "time"),
        _c("access_count", "int", nullable=False, default=0),
        _c("instance_id", "text"),
        _c("projects", "strings", nullable=False, default=("life",)),
        _c("memory_type", "text"),
        _c("subject", "text"),
        _c("content", "text", nullable=False),
        _c("content_hash", "text"),
        _c("keywords", "strings"),
        _c("tags", "strings"),
        _c("foundational", "bool", nullable=False, default=False),
        _c("source_type", "text"),
        _c("source_context", "text"),
        _c("source_session_id", "text"),
        _c("embedding", "vector"),
        _c("embedding_model", "text"),
        _c("embedding_dim", "int"),
        _c("expires_at", "time"),
        _c("is_archived", "bool", nullable=False, default=False),
        # "shared" (every instance), "private" (its instance_id only) or a scope's name
        _c("visibility", "text", nullable=False, default="shared"),
        _c("occurred_at", "time"),  # when it happened (None: when it was stored)
    ),
    indexes=(
        Index("ix_memories_instance", ("instance_id",)),
        Index("ix_memories_visibility", ("visibility", "instance_id")),
        Index("ix_memories_type", ("memory_type",)),
        Index("ix_memories_subject", ("subject",)),
        Index("ix_memories_created", ("created_at",)),
        Index("ix_memories_hash", ("content_hash",)),
        Index("ix_memories_archived", ("is_archived", "foundational")),
        Index("ix_memories_projects", ("projects",)),
        Index("ix_memories_expires", ("expires_at",), where="expires_at IS NOT NULL"),
    ),
    compare="content",
    record="memory",
)

EDGES = Table(
    "memory_edges",
    (
        _c("id", "id"),
        _c("created_at", "time", nullable=False, default=NOW),
        _c("source_id", "ref", nullable=False, references="memories(id)"),
        _c("target_id", "ref", nullable=False, references="memories(id)"),
        _c("relation_type", "text", nullable=False),
        _c("strength", "float", nullable=False, default=1.0),
        _c("bidirectional", "bool", nullable=False, default=False),
        _c("metadata", "json"),
        _c("created_by", "text"),
        _c("auto_linked", "bool", nullable=False, default=False),
    ),
    unique=(("source_id", "target_id", "relation_type"),),
    checks=("strength >= 0 AND strength <= 1", "source_id <> target_id"),
    indexes=(
        Index("ix_edges_source", ("source_id", "relation_type")),
        Index("ix_edges_target", ("target_id", "auto_linked")),
        Index("ix_edges_type", ("relation_type",)),
    ),
    compare="relation_type",
    record="edge",
)

# One row per change of a memory: who, when, and the values the change replaced (a JSON
# object of the changed columns). Version 1 is the memory as created; change n makes n + 1.
MEMORY_VERSIONS = Table(
    "memory_versions",
    (
        _c("id", "id"),
        _c("memory_id", "ref", nullable=False, references="memories(id)"),
        _c("version", "int", nullable=False),
        _c("changed_at", "time", nullable=False, default=NOW),
        _c("changed_by", "text"),
        _c("reason", "text"),
        _c("old_values", "json", nullable=False),
    ),
    unique=(("memory_id", "version"),),
    compare="version",
    record="memory_version",
)

MESSAGES = Table(
    "messages",
    (
        _c("id", "id"),
        _c("created_at", "time", nullable=False, default=NOW),
        _c("from_instance", "text", nullable=False),
        _c("to_instance", "text", nullable=False),
        _c("message_type", "text", nullable=False, default="message"),
        _c("subject", "text"),
        _c("content", "text", nullable=False),
        _c("channel", "text"),
        _c("priority", "int", nullable=False, default=0),
        _c("expires_at", "time"),
        _c("delivery_status", "text", nullable=False, default="pending"),
        _c("delivered_at", "time"),
        _c("thread_id", "int"),  # the first message of its thread (set on replies)
        _c("reply_to", "int"),  # the message this one answers
        _c("ack_required", "bool", nullable=False, default=False),
        _c("ack_within_s", "int"),
    ),
    checks=("priority >= 0 AND priority <= 10",),
    indexes=(
        Index("ix_messages_to", ("to_instance", "id")),
        Index("ix_messages_channel", ("channel", "id")),
        Index("ix_messages_thread", ("thread_id", "id")),
    ),
    compare="content",
    record="message",
)

MESSAGE_READS = Table(
    "message_reads",
    (
        _c("message_id", "ref", nullable=False, references="messages(id)"),
        _c("instance_id", "text", nullable=False),
        _c("read_at", "time", nullable=False, default=NOW),
        _c("acked_at", "time"),
    ),
    key=("message_id", "instance_id"),
    record="message_read",
)

# The durable delivery record: one row per message and recipient instance once a bridge has
# pushed its `new_message` event (claimed in the transaction that emits it, so a restart, a
# reconnect or a second bridge serving the same instance never emits it again).
MESSAGE_DELIVERIES = Table(
    "message_deliveries",
    (
        _c("message_id", "ref", nullable=False, references="messages(id)"),
        _c("instance_id", "text", nullable=False),
        _c("delivered_at", "time", nullable=False, default=NOW),
        _c("delivered_by", "text"),  # host:pid of the bridge that pushed it
        # ack_within_s messages: when to wake again if still unacknowledged, and how often
        # that happened (the last round sends the sender an overdue notice instead)
        _c("next_wake_at", "time"),
        _c("rewakes", "int", nullable=False, default=0),
    ),
    key=("message_id", "instance_id"),
    indexes=(
        Index("ix_deliveries_instance", ("instance_id", "message_id")),
        Index("ix_deliveries_due", ("next_wake_at",), where="next_wake_at IS NOT NULL"),
    ),
    record="message_delivery",  # exported: an imported or migrated copy does not wake again
)

SUBSCRIPTIONS = Table(
    "subscriptions",
    (
        _c("instance_id", "text", nullable=False),
        _c("channel", "text", nullable=False),
        _c("created_at", "time", nullable=False, default=NOW),
    ),
    key=("instance_id", "channel"),
    record="subscription",
)

# A memory subscription: wake `instance_id` when a memory matching the filter (any of
# `projects`, `memory_type` ('*' wildcards), any of `keywords`; absent parts match all) is
# stored. `filter_key` is the filter's canonical JSON; `after_id` the newest memory id when it
# was made (older memories never wake it).
MEMORY_SUBSCRIPTIONS = Table(
    "memory_subscriptions",
    (
        _c("instance_id", "text", nullable=False),
        _c("filter_key", "text", nullable=False),
        _c("projects", "strings"),
        _c("memory_type", "text"),
        _c("keywords", "strings"),
        _c("after_id", "int", nullable=False, default=0),
        _c("created_at", "time", nullable=False, default=NOW),
    ),
    key=("instance_id", "filter_key"),
    record="memory_subscription",
)

# Durable memory wakes, like message_deliveries: one row per memory and subscriber once a
# bridge has pushed its `new_memory` event.
MEMORY_DELIVERIES = Table(
    "memory_deliveries",
    (
        _c("memory_id", "ref", nullable=False, references="memories(id)"),
        _c("instance_id", "text", nullable=False),
        _c("delivered_at", "time", nullable=False, default=NOW),
        _c("delivered_by", "text"),
    ),
    key=("memory_id", "instance_id"),
    indexes=(Index("ix_memory_deliveries_instance", ("instance_id", "memory_id")),),
    record="memory_delivery",
)

SCOPE_MEMBERS = Table(
    "scope_members",
    (
        _c("scope", "text", nullable=False),
        _c("instance_id", "text", nullable=False),
        _c("created_at", "time", nullable=False, default=NOW),
    ),
    key=("scope", "instance_id"),
    record="scope_member",
)

TOKENS = Table(
    "tokens",
    (
        _c("token_id", "text", nullable=False),  # the public half of a token
        _c("instance_id", "text", nullable=False),
        _c("role", "text", nullable=False),
        _c("acts_as", "strings"),  # further instances it may act for (a gateway's agents)
        _c("salt", "text", nullable=False),
        _c("secret_hash", "text", nullable=False),  # scrypt of the secret half; never the secret
        _c("created_at", "time", nullable=False, default=NOW),
        _c("created_by", "text"),
        _c("last_used_at", "time"),
        _c("revoked_at", "time"),
    ),
    key=("token_id",),
)

META = Table(
    "palace_meta",
    (_c("key", "text", nullable=False), _c("value", "text", nullable=False)),
    key=("key",),
)

#: In dependency order: a table's references point to tables before it.
TABLES: tuple[Table, ...] = (
    META,
    MEMORIES,
    EDGES,
    MEMORY_VERSIONS,
    MESSAGES,
    MESSAGE_READS,
    MESSAGE_DELIVERIES,
    SUBSCRIPTIONS,
    MEMORY_SUBSCRIPTIONS,
    MEMORY_DELIVERIES,
    SCOPE_MEMBERS,
    TOKENS,
)
BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}
EXPORTED: tuple[Table, ...] = tuple(t for t in TABLES if t.exported)

# Columns a memory result card reads (everything but the vector and bookkeeping).
MEMORY_CARD = tuple(
    n for n in MEMORIES.names if n not in ("embedding", "content_hash", "embedding_dim")
)


def column_list(
    table: Table, names: tuple[str, ...] | None = None, alias: str | None = None
) -> str:
    """`a, b, c` (or `m.a, m.b`) for a SELECT of the given columns (default: all)."""
    prefix = f"{alias}." if alias else ""
    return ", ".join(prefix + n for n in (names or table.names))


__all__ = [
    "BY_NAME",
    "EDGES",
    "EXPORTED",
    "MEMORIES",
    "MEMORY_CARD",
    "MEMORY_DELIVERIES",
    "MEMORY_SUBSCRIPTIONS",
    "MEMORY_VERSIONS",
    "MESSAGES",
    "MESSAGE_DELIVERIES",
    "MESSAGE_READS",
    "META",
    "NOW",
    "SCOPE_MEMBERS",
    "SUBSCRIPTIONS",
    "TABLES",
    "TOKENS",
    "Column",
    "Index",
    "Table",
    "column_list",
]
