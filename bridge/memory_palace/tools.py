"""The tool registry: the single declaration of every tool, its parameters and defaults.

The bridge dispatches from it, the MCP server registers from it, and
`python -m memory_palace.tools --json` feeds the plugin's generated TypeBox schemas.
Parameters are JSON Schema fragments; `validate()` checks the subset used here and
raises InvalidParams naming the parameter.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .errors import InvalidParams

S: dict[str, Any] = {"type": "string"}
I: dict[str, Any] = {"type": "integer"}
N: dict[str, Any] = {"type": "number"}
B: dict[str, Any] = {"type": "boolean"}
O: dict[str, Any] = {"type": "object"}
STRS: dict[str, Any] = {"type": "array", "items": S}
INTS: dict[str, Any] = {"type": "array", "items": I}
STR_OR_STRS: dict[str, Any] = {"anyOf": [S, STRS]}
INT_OR_INTS: dict[str, Any] = {"anyOf": [I, INTS]}

DB_MANAGER_EXTENSIONS = {"mcp_server.extensions.db_manager", "db_manager"}


def p(schema: dict[str, Any], description: str, **extra: Any) -> dict[str, Any]:
    return {**schema, "description": description, **extra}


DATABASE = p(
    S,
    "Named database (memory domain), e.g. 'life' or 'work'. Omit for the default. "
    "Unknown names are derived from the default database and created.",
)
INSTANCE = p(S, "Agent instance id, e.g. 'prime'. Defaults to MEMORY_PALACE_INSTANCE_ID.")
PROJECT_FILTER = p(
    STR_OR_STRS,
    "Project filter: a string matches memories in that project; "
    "a list matches memories in any of them.",
)
GRAPH_MODE = p(S, "Graph context format.", enum=["summary", "full"], default="summary")
DIRECTION = p(
    S, "Edge direction for traversal.", enum=["outgoing", "incoming", "both"], default="both"
)


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    params: dict[str, dict[str, Any]]
    required: tuple[str, ...] = ()
    extension: str | None = None  # served only when this extension is enabled
    llm_backed: bool = False  # may call an LLM: surfaces give it a longer timeout
    openclaw_name: str | None = None

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": self.params,
            "required": list(self.required),
            "additionalProperties": False,
        }


TOOLS: list[Tool] = [
    Tool(
        "memory_set",
        "Remember something: store a memory (fact, decision, preference, event, ...) with its "
        "embedding. Exact duplicates return the existing id. Similar memories are linked.",
        {
            "content": p(S, "The memory text.", minLength=1),
            "memory_type": p(
                S,
                "Open vocabulary: fact, decision, preference, event, insight, "
                "gotcha, architecture, ...",
                default="fact",
            ),
            "subject": p(S, "Short title."),
            "instance_id": INSTANCE,
            "keywords": p(STRS, "Keywords for exact search."),
            "tags": p(STRS, "Free tags."),
            "foundational": p(B, "Core memory: never archived, never stale.", default=False),
            "project": p(STR_OR_STRS, "Project or list of projects.", default="life"),
            "source_type": p(
                S,
                "Where it came from.",
                enum=["conversation", "explicit", "inferred", "observation"],
                default="explicit",
            ),
            "source_context": p(S, "Free text about the source."),
            "source_session_id": p(S, "Session the memory came from."),
            "supersedes_id": p(I, "Id of a memory this one replaces; it is archived."),
            "auto_link": p(B, "Link to similar memories (default: config auto_link.enabled)."),
            "database": DATABASE,
        },
        required=("content",),
    ),
    Tool(
        "memory_recall",
        "Search memories by meaning and by exact words (hybrid vector + keyword search), "
        "with optional graph context. Each result says how it was found.",
        {
            "query": p(
                S, "What to look for: a question, topic, name, id or error string.", minLength=1
            ),
            "instance_id": p(S, "Only memories written by this instance."),
            "project": PROJECT_FILTER,
            "memory_type": p(S, "Only this type; '*' is a wildcard, e.g. 'code*'."),
            "subject": p(S, "Only memories whose subject contains this text."),
            "min_foundational": p(B, "Only foundational memories."),
            "include_archived": p(B, "Include archived memories.", default=False),
            "limit": p(I, "Maximum results (at most 100).", default=20, minimum=1),
            "detail_level": p(S, "Memory detail.", enum=["summary", "verbose"], default="verbose"),
            "synthesize": p(B, "Summarise the results with the configured LLM.", default=False),
            "include_graph": p(B, "Add graph context for the top results.", default=True),
            "graph_top_n": p(I, "How many top results get graph context.", default=5, minimum=0),
            "graph_depth": p(I, "Graph hops (1-5).", default=1, minimum=0, maximum=5),
            "graph_mode": GRAPH_MODE,
            "database": DATABASE,
        },
        required=("query",),
    ),
    Tool(
        "memory_get",
        "Fetch memories by id (one id or a list), with graph context or a graph traversal.",
        {
            "memory_ids": p(INT_OR_INTS, "A memory id or a list of ids."),
            "detail_level": p(S, "Memory detail.", enum=["summary", "verbose"], default="verbose"),
            "synthesize": p(
                B, "Summarise several memories with the configured LLM.", default=False
            ),
            "include_graph": p(B, "Add graph context.", default=True),
            "graph_depth": p(I, "Graph hops for context (0-5).", default=1, minimum=0, maximum=5),
            "graph_mode": GRAPH_MODE,
            "traverse": p(
                B, "Return a breadth-first traversal instead of graph context.", default=False
            ),
            "max_depth": p(I, "Traversal depth (1-5).", default=3, minimum=1, maximum=5),
            "direction": DIRECTION,
            "relation_types": p(STRS, "Only follow these edge types."),
            "min_strength": p(
                N, "Only follow edges at least this strong (0-1).", minimum=0, maximum=1
            ),
            "database": DATABASE,
        },
        required=("memory_ids",),
    ),
    Tool(
        "memory_recent",
        "List the newest memories as title cards.",
        {
            "limit": p(I, "How many (at most 200).", default=20, minimum=1, maximum=200),
            "verbose": p(B, "Full memories instead of title cards.", default=False),
            "project": PROJECT_FILTER,
            "memory_type": p(S, "Only this type; '*' is a wildcard."),
            "instance_id": p(S, "Only memories written by this instance."),
            "include_archived": p(B, "Include archived memories.", default=False),
            "database": DATABASE,
        },
    ),
    Tool(
        "memory_archive",
        "Archive (soft-delete) memories by id or by filters. Dry run by default. Foundational "
        "memories are never archived; central ones are protected.",
        {
            "memory_ids": p(INTS, "Ids to archive (override the filters)."),
            "older_than_days": p(I, "Only memories older than this.", minimum=0),
            "max_access_count": p(I, "Only memories accessed at most this often.", minimum=0),
            "memory_type": p(S, "Only this type; '*' is a wildcard."),
            "project": PROJECT_FILTER,
            "centrality_protection": p(B, "Skip memories with many incoming links.", default=True),
            "min_centrality_threshold": p(
                I, "Incoming links that protect a memory.", default=5, minimum=1
            ),
            "dry_run": p(B, "Only report what would be archived.", default=True),
            "reason": p(S, "Why; recorded on each archived memory."),
            "database": DATABASE,
        },
    ),
    Tool(
        "memory_link",
        "Create a typed edge between two memories (supersedes, relates_to, derived_from, "
        "contradicts, exemplifies, refines, or a custom type).",
        {
            "source_id": p(I, "Source memory id."),
            "target_id": p(I, "Target memory id."),
            "relation_type": p(S, "Edge type.", minLength=1),
            "strength": p(N, "0-1 (clamped).", default=1.0),
            "bidirectional": p(B, "The edge holds both ways.", default=False),
            "metadata": p(O, "Free JSON metadata."),
            "created_by": p(S, "Who made the edge."),
            "archive_old": p(B, "With supersedes: archive the target.", default=False),
            "database": DATABASE,
        },
        required=("source_id", "target_id", "relation_type"),
    ),
    Tool(
        "memory_unlink",
        "Remove edges from source to target (all types, or one).",
        {
            "source_id": p(I, "Source memory id."),
            "target_id": p(I, "Target memory id."),
            "relation_type": p(S, "Only this type; omit for all."),
            "database": DATABASE,
        },
        required=("source_id", "target_id"),
    ),
    Tool(
        "memory_stats",
        "Counts by type, instance and project, the most accessed and the newest memories.",
        {"database": DATABASE},
    ),
    Tool(
        "memory_audit",
        "Find quality problems: duplicates, stale memories, orphan edges, missing embeddings, "
        "contradictions, unlinked memories, cross-project auto-links.",
        {
            "checks": p(
                STRS,
                "Checks to run; omit for all.",
                items={
                    **S,
                    "enum": [
                        "duplicates",
                        "stale",
                        "orphan_edges",
                        "missing_embeddings",
                        "contradictions",
                        "unlinked",
                        "cross_project_auto_links",
                    ],
                },
            ),
            "thresholds": p(
                O,
                "Overrides: duplicate_similarity (0.92), stale_days (90), "
                "stale_max_access (2), stale_min_centrality (3).",
            ),
            "project": p(S, "Only this project."),
            "limit_per_category": p(I, "Maximum findings per check.", default=20, minimum=1),
            "database": DATABASE,
        },
    ),
    Tool(
        "memory_reembed",
        "Re-embed memories with the configured embedder: missing only, by ids, by filters, or "
        "all. Dry run by default; batched and resumable.",
        {
            "older_than_days": p(I, "Only memories older than this.", minimum=0),
            "memory_ids": p(INTS, "Only these ids."),
            "project": p(S, "Only this project."),
            "all_memories": p(
                B, "Every memory (needed to change embedder or dimension).", default=False
            ),
            "missing_only": p(
                B, "Only memories without an embedding from this embedder.", default=False
            ),
            "batch_size": p(
                I, "Memories per batch and commit.", default=50, minimum=1, maximum=1000
            ),
            "dry_run": p(B, "Only count what would be re-embedded.", default=True),
            "database": DATABASE,
        },
    ),
    Tool(
        "message",
        "Messages between agent instances. action=send|get|mark_read|mark_unread|subscribe|"
        "unsubscribe|poll. Recipients are woken by push when the database is PostgreSQL.",
        {
            "action": p(
                S,
                "What to do.",
                enum=[
                    "send",
                    "get",
                    "mark_read",
                    "mark_unread",
                    "subscribe",
                    "unsubscribe",
                    "poll",
                ],
            ),
            "instance_id": p(S, "Your instance (get, mark_*, subscribe, poll)."),
            "from_instance": p(S, "Sender (send)."),
            "to_instance": p(S, "Recipient instance, or 'all' (send)."),
            "content": p(S, "Message body (send)."),
            "message_type": p(
                S,
                "handoff, status, question, fyi, context, event or message.",
                enum=["handoff", "status", "question", "fyi", "context", "event", "message"],
                default="message",
            ),
            "subject": p(S, "Short subject (send)."),
            "channel": p(S, "Channel name (send, get, subscribe, unsubscribe)."),
            "priority": p(I, "0-10 (send).", default=0, minimum=0, maximum=10),
            "ttl_seconds": p(I, "Expire the message after this many seconds (send).", minimum=1),
            "unread_only": p(B, "Only unread messages (get).", default=True),
            "limit": p(I, "Maximum messages (get, poll).", default=50, minimum=1, maximum=500),
            "message_id": p(I, "Message id (mark_read, mark_unread)."),
            "since_id": p(I, "Only messages with a larger id (poll).", default=0, minimum=0),
            "database": DATABASE,
        },
        required=("action",),
        openclaw_name="palace_message",
    ),
    Tool(
        "memory_list_databases",
        "List every configured or registered database with masked URL, type, status, whether "
        "it is the default, and table counts.",
        {},
        extension="db_manager",
    ),
    Tool(
        "memory_register_database",
        "Register a named database for this process (not persisted). Without a URL it is "
        "derived from the default. The schema is created and the connection checked.",
        {"name": p(S, "Database name."), "url": p(S, "Database URL (optional).")},
        required=("name",),
        extension="db_manager",
    ),
    Tool(
        "memory_set_default_database",
        "Make a named database the default for every later call that names none (this process "
        "only, not persisted).",
        {"name": p(S, "Database name.")},
        required=("name",),
        extension="db_manager",
    ),
    Tool(
        "memory_current_database",
        "Show the default database: name, masked URL, status and table counts.",
        {},
        extension="db_manager",
    ),
]

BY_NAME: dict[str, Tool] = {t.name: t for t in TOOLS}


def enabled_tools(extensions: tuple[str, ...] | list[str]) -> list[Tool]:
    names = {("db_manager" if e in DB_MANAGER_EXTENSIONS else e) for e in extensions}
    return [t for t in TOOLS if t.extension is None or t.extension in names]


_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}


def _matches(value: Any, schema: Mapping[str, Any]) -> bool:
    if "anyOf" in schema:
        return any(_matches(value, s) for s in schema["anyOf"])
    kind = schema["type"]
    if isinstance(value, bool) and kind in ("integer", "number"):
        return False
    if not isinstance(value, _TYPES[kind]):
        return False
    if kind == "array" and "items" in schema:
        return all(_matches(v, schema["items"]) for v in value)
    return True


def _describe(schema: Mapping[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_describe(s) for s in schema["anyOf"])
    if schema["type"] == "array":
        return f"a list of {_describe(schema.get('items', {'type': 'value'}))}s"
    return {"integer": "an integer", "object": "an object", "array": "a list"}.get(
        schema["type"], f"a {schema['type']}"
    )


def validate(tool: Tool, params: Any) -> dict[str, Any]:
    """Check params against the tool's schema; return them with defaults filled in."""
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise InvalidParams(f"{tool.name}: params must be a JSON object")
    unknown = sorted(set(params) - set(tool.params))
    if unknown:
        raise InvalidParams(
            f"{tool.name}: unknown parameter {unknown[0]!r}; expected one of "
            f"{', '.join(sorted(tool.params))}",
            param=unknown[0],
        )
    out: dict[str, Any] = {}
    for name, schema in tool.params.items():
        value = params.get(name)
        if value is None:
            if name in tool.required:
                raise InvalidParams(f"{tool.name}: missing required parameter {name!r}", param=name)
            out[name] = schema.get("default")
            continue
        if not _matches(value, schema):
            raise InvalidParams(
                f"{tool.name}: parameter {name!r} must be {_describe(schema)}, got "
                f"{type(value).__name__} {orjson.dumps(value)[:80].decode(errors='replace')}",
                param=name,
            )
        if "enum" in schema and value not in schema["enum"]:
            raise InvalidParams(
                f"{tool.name}: parameter {name!r} must be one of "
                f"{', '.join(schema['enum'])}, got {value!r}",
                param=name,
            )
        items = schema.get("items")
        if isinstance(value, list) and items and "enum" in items:
            bad = [v for v in value if v not in items["enum"]]
            if bad:
                raise InvalidParams(
                    f"{tool.name}: parameter {name!r} has unknown value "
                    f"{bad[0]!r}; use {', '.join(items['enum'])}",
                    param=name,
                )
        if "minimum" in schema and isinstance(value, (int, float)) and value < schema["minimum"]:
            raise InvalidParams(
                f"{tool.name}: parameter {name!r} must be >= {schema['minimum']}", param=name
            )
        if "maximum" in schema and isinstance(value, (int, float)) and value > schema["maximum"]:
            raise InvalidParams(
                f"{tool.name}: parameter {name!r} must be <= {schema['maximum']}", param=name
            )
        if "minLength" in schema and isinstance(value, str) and len(value.strip()) < 1:
            raise InvalidParams(f"{tool.name}: parameter {name!r} must not be empty", param=name)
        out[name] = value
    return out


def export() -> list[dict[str, Any]]:
    return [
        {
            "name": t.name,
            "openclaw_name": t.openclaw_name or t.name,
            "description": t.description,
            "parameters": t.schema(),
            "extension": t.extension,
            "llm_backed": t.llm_backed,
        }
        for t in TOOLS
    ]


if __name__ == "__main__":  # python -m memory_palace.tools --json
    sys.stdout.buffer.write(orjson.dumps(export(), option=orjson.OPT_INDENT_2) + b"\n")
