"""The tool registry: the single declaration of every tool.

A tool is a service function plus one `Tool.of(...)` line below. The function's docstring is
the description; its keyword-only parameters annotated with `P(...)` (see params.py) are the
parameters, with their types, bounds and defaults; its leading parameters name what the
caller injects (DEPENDENCIES). Everything else derives from here: dispatch (`Palace.call`),
validation, the bridge's methods and identity rules, the MCP tool list, the CLI's
`memory-palace call`, and (through `python -m memory_palace.tools`, read by
scripts/gen-tool-schemas) the OpenClaw plugin's TypeBox schemas and manifest.
"""

from __future__ import annotations

import inspect
import sys
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import orjson

from .errors import InvalidParams
from .params import MAX_INT64, P
from .services import access, databases, lifecycle, maintenance, memories, messages, recall

#: What a handler may ask for by naming a leading parameter.
DEPENDENCIES = ("db", "embedder", "settings", "catalog", "open_database", "caller")
SURFACES = ("bridge", "mcp", "cli", "openclaw")
DB_MANAGER = "db_manager"
#: Config `extensions` entries and the registry extension each enables (the first entry is the
#: name the docs use, kept from the original Memory Palace).
EXTENSION_NAMES = {"mcp_server.extensions.db_manager": DB_MANAGER, DB_MANAGER: DB_MANAGER}
EXTENSION_CONFIG = {ext: name for name, ext in reversed(EXTENSION_NAMES.items())}

DATABASE_PARAM: dict[str, Any] = {
    "type": "string",
    "description": "Named database (memory domain), e.g. 'life' or 'work'. Omit for the "
    "default. Unknown names are derived from the default database and created.",
}
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _schema_of(tp: Any) -> dict[str, Any]:
    """JSON Schema for a parameter type (the subset tools use)."""
    origin = get_origin(tp)
    if origin is Annotated:
        base, *meta = get_args(tp)
        out = _schema_of(base)
        for m in meta:
            if isinstance(m, P):
                out.update(m.schema())
        return out
    if origin in (Union, types.UnionType):
        members = [a for a in get_args(tp) if a is not type(None)]
        if len(members) == 1:
            return _schema_of(members[0])
        return {"anyOf": [_schema_of(m) for m in members]}
    if origin is Literal:
        values = list(get_args(tp))
        return {"type": _SIMPLE[type(values[0])], "enum": values}
    if origin is list:
        (item,) = get_args(tp) or (str,)
        return {"type": "array", "items": _schema_of(item)}
    if origin is dict or tp is dict:
        return {"type": "object"}
    if tp in _SIMPLE:
        return {"type": _SIMPLE[tp]}
    raise TypeError(f"tool parameter type {tp!r} has no JSON Schema mapping; extend _schema_of")


def _push_bounds(schema: dict[str, Any], bounds: dict[str, Any] | None = None) -> dict[str, Any]:
    """`minimum`/`maximum` given on a list or union of numbers apply to the numbers in it."""
    if bounds is None:
        if schema.get("type") in ("integer", "number"):
            return schema
        bounds = {k: schema.pop(k) for k in ("minimum", "maximum") if k in schema}
        if not bounds:
            return schema
    if schema.get("type") in ("integer", "number"):
        schema.update(bounds)
    elif schema.get("type") == "array":
        _push_bounds(schema["items"], bounds)
    for member in schema.get("anyOf", []):
        _push_bounds(member, bounds)
    return schema


@dataclass(frozen=True)
class Tool:
    name: str
    handler: Callable[..., dict[str, Any]] = field(repr=False)
    description: str
    params: dict[str, dict[str, Any]]
    required: tuple[str, ...] = ()
    deps: tuple[str, ...] = ()
    extension: str | None = None  # served only when this extension is enabled
    aliases: tuple[str, ...] = ()  # other names it answers to (and OpenClaw registers)
    openclaw_name: str | None = None  # its name in OpenClaw, when that differs
    identity: tuple[str, ...] = ()  # parameters that say which instance the caller is
    direct: bool = False  # OpenClaw: always visible to the model (not behind tool search)
    surfaces: tuple[str, ...] = SURFACES
    # What a call may change that surfaces react to: "subscriptions" (the bridge re-reads the
    # channels it listens to), "sends" (a result with id/from_instance/to_instance: MCP wakes).
    effects: tuple[str, ...] = ()
    role: str = "reader"  # the least role a caller needs (reader, writer, admin)

    @classmethod
    def of(cls, fn: Callable[..., dict[str, Any]], name: str, **meta: Any) -> Tool:
        """Derive a tool from a service function (see the module docstring)."""
        hints = typing.get_type_hints(fn, include_extras=True)
        deps: list[str] = []
        params: dict[str, dict[str, Any]] = {}
        required: list[str] = []
        for pname, p in inspect.signature(fn).parameters.items():
            if p.kind is not p.KEYWORD_ONLY:
                if pname not in DEPENDENCIES:
                    raise TypeError(
                        f"{fn.__qualname__}: leading parameter {pname!r} is not a "
                        f"dependency ({', '.join(DEPENDENCIES)})"
                    )
                deps.append(pname)
                continue
            hint = hints[pname]
            if get_origin(hint) is not Annotated or not any(
                isinstance(m, P) for m in get_args(hint)[1:]
            ):
                continue  # not a tool parameter (a Python-only hook such as a progress callback)
            schema = _push_bounds(_schema_of(hint))
            if p.default is p.empty:
                required.append(pname)
            elif p.default is not None:
                schema["default"] = p.default
            params[pname] = schema
        if "db" in deps:
            params["database"] = dict(DATABASE_PARAM)
        doc = inspect.getdoc(fn) or ""
        description = " ".join(doc.split("\n\n", 1)[0].split())
        if not description:
            raise TypeError(f"{fn.__qualname__}: a tool needs a docstring (its description)")
        return cls(name, fn, description, params, tuple(required), tuple(deps), **meta)

    @property
    def takes_database(self) -> bool:
        return "db" in self.deps

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": self.params,
            "required": list(self.required),
            "additionalProperties": False,
        }


TOOLS: tuple[Tool, ...] = (
    Tool.of(memories.remember, "memory_set", identity=("instance_id",), direct=True, role="writer"),
    Tool.of(recall.recall, "memory_recall", aliases=("memory_search",), direct=True),
    Tool.of(memories.get, "memory_get", direct=True),
    Tool.of(memories.recent, "memory_recent"),
    Tool.of(memories.archive, "memory_archive", role="writer"),
    Tool.of(memories.link, "memory_link", role="writer"),
    Tool.of(memories.unlink, "memory_unlink", role="writer"),
    Tool.of(lifecycle.update, "memory_update", role="writer"),
    Tool.of(lifecycle.history, "memory_history"),
    Tool.of(lifecycle.forget, "memory_forget", role="writer"),
    Tool.of(lifecycle.unarchive, "memory_unarchive", role="writer"),
    Tool.of(memories.stats, "memory_stats"),
    Tool.of(maintenance.audit, "memory_audit"),
    Tool.of(maintenance.reembed, "memory_reembed", role="admin"),
    Tool.of(access.scope, "memory_scope"),
    Tool.of(
        messages.handle,
        "message",
        openclaw_name="palace_message",
        identity=("instance_id", "from_instance"),
        direct=True,
        effects=("subscriptions", "sends"),
    ),
    Tool.of(databases.list_databases, "memory_list_databases", extension=DB_MANAGER, role="admin"),
    Tool.of(
        databases.register_database, "memory_register_database", extension=DB_MANAGER, role="admin"
    ),
    Tool.of(
        databases.set_default_database,
        "memory_set_default_database",
        extension=DB_MANAGER,
        role="admin",
    ),
    Tool.of(
        databases.current_database, "memory_current_database", extension=DB_MANAGER, role="admin"
    ),
)


class Registry:
    """The tools one process serves: the registry filtered by the enabled extensions."""

    def __init__(
        self, tools: tuple[Tool, ...] | list[Tool], extensions: tuple[str, ...] = ()
    ) -> None:
        enabled = {EXTENSION_NAMES.get(e, e) for e in extensions}
        self.all = tuple(tools)
        self.tools = tuple(t for t in tools if t.extension is None or t.extension in enabled)
        self._by_name: dict[str, Tool] = {}
        for t in self.tools:
            for n in (t.name, *t.aliases, *([t.openclaw_name] if t.openclaw_name else [])):
                self._by_name[n] = t
        self.extensions = tuple(sorted({t.extension for t in self.tools if t.extension}))

    def get(self, name: str) -> Tool:
        """The tool answering to `name` (its name, an alias or its OpenClaw name)."""
        tool = self._by_name.get(name)
        if tool is None:
            off = next((t for t in self.all if name in (t.name, *t.aliases)), None)
            hint = (
                f' (enable it with config "extensions": ["{EXTENSION_CONFIG[off.extension]}"])'
                if off is not None and off.extension
                else ""
            )
            raise InvalidParams(
                f"unknown tool {name!r}{hint}; tools are {', '.join(t.name for t in self.tools)}"
            )
        return tool

    def names(self) -> list[str]:
        return list(self._by_name)

    def for_surface(self, surface: str) -> list[Tool]:
        return [t for t in self.tools if surface in t.surfaces]


# -- validation ---------------------------------------------------------------------------

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


def _preview(value: Any) -> str:
    try:
        return orjson.dumps(value)[:80].decode(errors="replace")
    except (TypeError, orjson.JSONEncodeError):
        return type(value).__name__


def _member(value: Any, schema: Mapping[str, Any]) -> Mapping[str, Any]:
    """The schema (or anyOf member) that `value` matched."""
    for s in schema.get("anyOf", [schema]):
        if _matches(value, s):
            return s
    return schema


def _check_value(tool: str, name: str, value: Any, schema: Mapping[str, Any]) -> None:
    s = _member(value, schema)
    values = value if isinstance(value, list) else [value]
    item = s.get("items", s) if isinstance(value, list) else s
    for v in values:
        if "enum" in item and v not in item["enum"]:
            raise InvalidParams(
                f"{tool}: parameter {name!r} must be one of "
                f"{', '.join(map(str, item['enum']))}, got {v!r}",
                param=name,
            )
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            low = item.get("minimum", -MAX_INT64 - 1 if isinstance(v, int) else None)
            high = item.get("maximum", MAX_INT64 if isinstance(v, int) else None)
            if low is not None and v < low:
                raise InvalidParams(f"{tool}: parameter {name!r} must be >= {low}", param=name)
            if high is not None and v > high:
                raise InvalidParams(f"{tool}: parameter {name!r} must be <= {high}", param=name)
    if isinstance(value, str):
        if "minLength" in s and len(value.strip()) < s["minLength"]:
            raise InvalidParams(f"{tool}: parameter {name!r} must not be empty", param=name)
        if "maxLength" in s and len(value) > s["maxLength"]:
            raise InvalidParams(
                f"{tool}: parameter {name!r} is longer than {s['maxLength']} characters", param=name
            )


def validate(tool: Tool, params: Any) -> dict[str, Any]:
    """Check params against the tool's schema; return them with defaults filled in.

    Raises InvalidParams naming the parameter, what it must be, and what it got.
    """
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
                f"{tool.name}: parameter {name!r} must be {_describe(schema)}, "
                f"got {type(value).__name__} {_preview(value)}",
                param=name,
            )
        _check_value(tool.name, name, value, schema)
        _check_text(tool.name, name, value)
        out[name] = value
    return out


MAX_DEPTH = 32  # nesting of JSON values (metadata, thresholds); orjson refuses > 254


def _check_text(tool: str, name: str, value: Any, depth: int = 0) -> None:
    """Text that neither backend can store identically is refused the same way on both:
    NUL characters (PostgreSQL text cannot hold U+0000) and lone surrogates (not UTF-8)."""
    if depth > MAX_DEPTH:
        raise InvalidParams(
            f"{tool}: parameter {name!r} is nested deeper than {MAX_DEPTH} levels", param=name
        )
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidParams(
                f"{tool}: parameter {name!r} contains a NUL character "
                "(\\u0000), which cannot be stored; remove it",
                param=name,
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise InvalidParams(
                f"{tool}: parameter {name!r} is not valid Unicode (a lone "
                f"surrogate at character {exc.start}); send UTF-8 text",
                param=name,
            ) from None
    elif isinstance(value, list):
        for item in value:
            _check_text(tool, name, item, depth + 1)
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_text(tool, name, key, depth + 1)
            _check_text(tool, name, item, depth + 1)


def export(tools: tuple[Tool, ...] = TOOLS) -> list[dict[str, Any]]:
    """The registry as JSON for other languages (scripts/gen-tool-schemas)."""
    return [
        {
            "name": t.name,
            "openclaw_name": t.openclaw_name or t.name,
            "description": t.description,
            "parameters": t.schema(),
            "extension": t.extension,
            "aliases": list(t.aliases),
            "identity": list(t.identity),
            "direct": t.direct,
            "surfaces": list(t.surfaces),
            "effects": list(t.effects),
        }
        for t in tools
    ]


if __name__ == "__main__":  # python -m memory_palace.tools
    sys.stdout.buffer.write(orjson.dumps(export(), option=orjson.OPT_INDENT_2) + b"\n")
