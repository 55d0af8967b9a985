"""Who is calling, what they may do, and what they may see.

A `Caller` comes from a credential (a token) or, without one, from what the caller says
(`verified` False: today's single-user behaviour). Roles: reader (read its scopes), writer
(also write), admin (also tokens, database manager tools, archiving others' shared memories).
Tokens are `mpt_<id>_<secret>`: the id is stored, the secret only as a salted scrypt hash.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

from sqlalchemy import bindparam, text

from ..db.engine import Database
from ..db.filters import PRIVATE, SHARED, Access
from ..db.tables import SCOPE_MEMBERS, TOKENS
from ..db.values import decode_strings, iso, utcnow
from ..errors import InvalidParams, NotFound, PermissionDenied
from ..params import P
from .names import check_name

Role = Literal["reader", "writer", "admin"]
ROLES: tuple[str, ...] = ("reader", "writer", "admin")
RANK = {role: i for i, role in enumerate(ROLES)}
TOKEN_RE = re.compile(r"^mpt_([a-z0-9]{12})_([A-Za-z0-9_-]{32,})$")
SCOPE_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,47}$")
SCRYPT = {"n": 2**14, "r": 8, "p": 1, "dklen": 32}  # interactive-login strength (RFC 7914)


@dataclass(frozen=True)
class Caller:
    """The identity a call runs as. `instance` None: the process's configured instance.

    `verified`: proven by a token. `assigned`: fixed for this call by the surface (a gateway
    that maps each agent to its instance), so parameters cannot name another instance even
    without tokens. Either makes the identity binding."""

    instance: str | None = None
    role: str = "admin"
    verified: bool = False
    acts_as: frozenset[str] = field(default_factory=frozenset)
    assigned: bool = False

    @property
    def bound(self) -> bool:
        return self.verified or self.assigned

    def may_be(self, instance: str) -> bool:
        return not self.bound or instance == self.instance or instance in self.acts_as

    def check_role(self, needed: str, what: str) -> None:
        if RANK[self.role] < RANK[needed]:
            raise PermissionDenied(
                f"{what} needs the {needed} role; you are {self.describe()}. Ask an admin for a "
                f"token with --role {needed}.",
                needed=needed,
                role=self.role,
            )

    def describe(self) -> str:
        if self.verified:
            return f"instance {self.instance!r} ({self.role}, verified by token)"
        if self.assigned:
            return f"instance {self.instance!r} (assigned by the gateway; no token)"
        return f"instance {self.instance or 'default'!r} (unverified: no token)"

    def act_as(self, instance: str) -> Caller:
        """This caller speaking for `instance` (a gateway for one of its agents): bound to it."""
        if not self.may_be(instance):
            raise PermissionDenied(
                f"you are {self.describe()} and may not act as {instance!r}", instance=instance
            )
        return replace(self, instance=instance, acts_as=frozenset(), assigned=True)


def scopes_of(db: Database, instance: str) -> tuple[str, ...]:
    with db.read() as conn:
        rows = conn.execute(
            text("SELECT scope FROM scope_members WHERE instance_id = :i ORDER BY scope"),
            {"i": instance},
        )
        return tuple(r[0] for r in rows)


def access_for(db: Database, caller: Caller) -> Access:
    """What `caller` may see in `db` (its instance is always set by Palace.call)."""
    viewer = caller.instance or "default"
    return Access(viewer, scopes_of(db, viewer))


def check_visibility(db: Database, caller: Caller, visibility: str, owner: str) -> str:
    """A visibility a memory may get: shared, private, or a scope its owner belongs to."""
    if visibility in (SHARED, PRIVATE):
        return visibility
    if not SCOPE_RE.match(visibility):
        raise InvalidParams(
            f"visibility {visibility!r}: use shared, private or a scope name "
            "(lowercase letters, digits, '_' or '-')",
            param="visibility",
        )
    if visibility not in scopes_of(db, owner):
        raise PermissionDenied(
            f"instance {owner!r} is not a member of scope {visibility!r}; an admin adds "
            "members with the memory_scope tool (action add)",
            param="visibility",
        )
    return visibility


# -- tokens -------------------------------------------------------------------------------


def _hash(secret: str, salt: str) -> str:
    return hashlib.scrypt(secret.encode(), salt=bytes.fromhex(salt), **SCRYPT).hex()


def create_token(
    db: Database,
    caller: Caller,
    instance: str,
    role: str,
    acts_as: list[str] | None = None,
) -> dict[str, Any]:
    """A new token for `instance`; the secret is in the result only, never stored."""
    caller.check_role("admin", "creating tokens")
    instance = check_name(instance, "instance")
    acts_as = [check_name(other, "acts_as") for other in acts_as or []]
    if role not in ROLES:
        raise InvalidParams(f"role must be one of {', '.join(ROLES)}", param="role")
    token_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    salt = secrets.token_hex(16)
    values = {
        "token_id": token_id,
        "instance_id": instance,
        "role": role,
        "acts_as": sorted(set(acts_as)),
        "salt": salt,
        "secret_hash": _hash(secret, salt),
        "created_at": utcnow(),
        "created_by": caller.instance if caller.verified else None,  # None: local admin
    }
    with db.write() as conn:
        conn.execute(
            text(db.backend.insert_sql(TOKENS, values)), db.backend.encode_row(TOKENS, values)
        )
    return {
        "token": f"mpt_{token_id}_{secret}",
        "token_id": token_id,
        "instance": instance,
        "role": role,
        "acts_as": values["acts_as"],
        "note": "shown once: store it now; only its hash is kept",
    }


def verify_token(db: Database, token: str) -> Caller:
    """The caller a token stands for. Raises PermissionDenied (never naming the secret)."""
    match = TOKEN_RE.match(token.strip())
    if match is None:
        raise PermissionDenied(
            "the token is malformed (expected mpt_<id>_<secret>); create "
            "one with `memory-palace token create <instance>`"
        )
    token_id, secret = match.groups()
    with db.read() as conn:
        row = conn.execute(
            text(
                "SELECT instance_id, role, acts_as, salt, secret_hash, "
                "revoked_at FROM tokens WHERE token_id = :t"
            ),
            {"t": token_id},
        ).first()
    if row is None or not hmac.compare_digest(_hash(secret, row.salt), row.secret_hash):
        raise PermissionDenied(f"token {token_id} is not valid for this database")
    if row.revoked_at is not None:
        raise PermissionDenied(f"token {token_id} was revoked on {iso(row.revoked_at)}")
    with db.write() as conn:
        conn.execute(
            text("UPDATE tokens SET last_used_at = :now WHERE token_id = :t"),
            {"now": db.backend.encode("time", utcnow()), "t": token_id},
        )
    return Caller(row.instance_id, row.role, True, frozenset(decode_strings(row.acts_as)))


def list_tokens(db: Database, caller: Caller) -> list[dict[str, Any]]:
    caller.check_role("admin", "listing tokens")
    with db.read() as conn:
        rows = conn.execute(
            text(
                "SELECT token_id, instance_id, role, acts_as, created_at, "
                "created_by, last_used_at, revoked_at FROM tokens "
                "ORDER BY created_at, token_id"
            )
        ).all()
    return [
        {
            "token_id": r.token_id,
            "instance": r.instance_id,
            "role": r.role,
            "acts_as": decode_strings(r.acts_as),
            "created_at": iso(r.created_at),
            "created_by": r.created_by,
            "last_used_at": iso(r.last_used_at),
            "revoked_at": iso(r.revoked_at),
        }
        for r in rows
    ]


def revoke_token(db: Database, caller: Caller, token_id: str) -> dict[str, Any]:
    caller.check_role("admin", "revoking tokens")
    with db.write() as conn:
        done = conn.execute(
            text("UPDATE tokens SET revoked_at = :now WHERE token_id = :t AND revoked_at IS NULL"),
            {"now": db.backend.encode("time", utcnow()), "t": token_id},
        ).rowcount
    if not done:
        raise NotFound(f"no active token {token_id!r}; list them with `memory-palace token list`")
    return {"revoked": token_id}


# -- scopes -------------------------------------------------------------------------------


def scope(
    db: Database,
    caller: Caller,
    *,
    action: Annotated[
        Literal["list", "add", "remove"],
        P("list scopes and members, or add / remove members (admin)."),
    ] = "list",
    name: Annotated[str | None, P("Scope name (add, remove).")] = None,
    members: Annotated[list[str] | None, P("Instances to add or remove.")] = None,
) -> dict[str, Any]:
    """Team scopes: memories with visibility <scope> are seen by the scope's members only.
    action=list shows the scopes (members see their own; admins all); add/remove members
    needs the admin role."""
    if action != "list":
        caller.check_role("admin", f"memory_scope action={action}")
        if not name or not SCOPE_RE.match(name) or name in (SHARED, PRIVATE):
            raise InvalidParams(
                "name must be a scope name: lowercase letters, digits, '_' "
                "or '-' (not shared or private)",
                param="name",
            )
        if not members:
            raise InvalidParams(f"{action} needs members (instance ids)", param="members")
        members = [check_name(m, "members") for m in members]
        with db.write() as conn:
            if action == "add":
                rows = [{"scope": name, "instance_id": m, "created_at": utcnow()} for m in members]
                conn.execute(
                    text(
                        db.backend.insert_sql(
                            SCOPE_MEMBERS, rows[0], on_conflict=" ON CONFLICT DO NOTHING"
                        )
                    ),
                    [db.backend.encode_row(SCOPE_MEMBERS, r) for r in rows],
                )
            else:
                conn.execute(
                    text(
                        "DELETE FROM scope_members WHERE scope = :s AND instance_id IN :m"
                    ).bindparams(bindparam("m", expanding=True)),
                    {"s": name, "m": list(members)},
                )
    with db.read() as conn:
        rows = conn.execute(
            text("SELECT scope, instance_id FROM scope_members ORDER BY scope, instance_id")
        ).all()
    scopes: dict[str, list[str]] = {}
    for r in rows:
        scopes.setdefault(r.scope, []).append(r.instance_id)
    if caller.verified and caller.role != "admin":
        scopes = {s: m for s, m in scopes.items() if caller.instance in m}
    return {"scopes": scopes}
