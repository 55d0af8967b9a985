"""Generate the retrieval-quality data set (memories.jsonl, queries.jsonl) for bench_quality.py.

Reads the hand-written files in bench/quality/content/ and expands them with a fixed seed, so
the output is byte-identical on every run. Usage:

    python bench/quality/generate.py            # writes bench/quality/{memories,queries}.jsonl
    python bench/quality/generate.py --check    # exits 1 if the committed files are stale

Memories are listed in insertion order: an updated fact always comes after the one it replaces.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
import sys
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONTENT = HERE / "content"
SEED = 20261202
STOP = frozenset(
    re.findall(
        r"\w+",
        """
    a an and are as at be but by do does did for from had has have how i in is it its me my of
    on or our so than that the their them then there these they this to was we were what when
    where which who why will with you your after before into not only over under up out""",
    )
)


@dataclass
class Memory:
    key: str
    content: str
    project: str
    memory_type: str
    domain: str
    role: str
    group: str
    subject: str | None = None
    keywords: list[str] = field(default_factory=list)
    source_type: str = "explicit"
    source_session_id: str | None = None
    supersedes: str | None = None
    time: float = 0.0  # position on the insertion timeline (0..1)
    seq: int = 0

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.key,
            "content": self.content,
            "project": self.project,
            "memory_type": self.memory_type,
        }
        if self.subject:
            out["subject"] = self.subject
        if self.keywords:
            out["keywords"] = self.keywords
        out["source_type"] = self.source_type
        if self.source_session_id:
            out["source_session_id"] = self.source_session_id
        if self.supersedes:
            out["supersedes"] = self.supersedes
        out.update(domain=self.domain, role=self.role, group=self.group)
        return out


@dataclass
class Query:
    category: str
    text: str
    targets: dict[str, int]
    group: str
    domain: str
    split: str = ""
    project: str | None = None
    memory_type: str | None = None
    hard: bool = False
    stale: list[str] = field(default_factory=list)
    distractors: list[str] = field(default_factory=list)
    identifier: str | None = None

    def record(self, qid: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": qid,
            "category": self.category,
            "text": self.text,
            "targets": self.targets,
            "split": self.split,
        }
        filters = {
            k: v for k, v in (("project", self.project), ("memory_type", self.memory_type)) if v
        }
        if filters:
            out["filters"] = filters
        out.update(domain=self.domain, group=self.group)
        if self.hard:
            out["hard"] = True
        if self.stale:
            out["stale"] = self.stale
        if self.distractors:
            out["distractors"] = self.distractors
        if self.identifier:
            out["identifier"] = self.identifier
        return out


def type_filter(group: str, memory_type: str) -> str | None:
    """About a third of the typed questions ("what do we prefer", "what did we decide") also
    filter by memory_type, as an agent that knows what it is looking for would."""
    if memory_type not in ("preference", "decision", "gotcha"):
        return None
    return memory_type if hashlib.sha256(f"type:{group}".encode()).digest()[0] % 3 == 0 else None


def hash_split(group: str) -> str:
    """dev or test from a stable hash of the item's group, so related queries stay together."""
    return "dev" if hashlib.sha256(group.encode()).digest()[0] % 2 == 0 else "test"


def rows(name: str, nfields: int) -> list[list[str]]:
    out = []
    for line in (CONTENT / name).read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        line = re.sub(r"\s*\|\s*$", "", line)  # an empty last field
        parts = [p.strip() for p in line.split(" | ")]
        parts += [""] * (nfields - len(parts))
        if len(parts) != nfields:
            raise SystemExit(f"{name}: expected {nfields} fields: {line}")
        out.append(parts)
    return out


def topical_keywords(text: str, n: int = 2) -> list[str]:
    words = [w for w in re.findall(r"[A-Za-z][A-Za-z-]{3,}", text) if w.lower() not in STOP]
    return sorted(dict.fromkeys(w.lower() for w in words), key=lambda w: (-len(w), w))[:n]


class Builder:
    def __init__(self) -> None:
        self.rng = random.Random(SEED)
        self.memories: list[Memory] = []
        self.queries: list[Query] = []
        self.counter = 0

    def add(self, **kw: Any) -> Memory:
        self.counter += 1
        m = Memory(key=kw.pop("key", None) or f"m{self.counter:05d}", seq=self.counter, **kw)
        m.time = kw.get("time", self.rng.random())
        self.memories.append(m)
        return m

    # --- hand-written single-memory categories ------------------------------------------------

    def paraphrase(self) -> None:
        for i, (dom, proj, typ, subj, mem, q, near) in enumerate(rows("paraphrase.txt", 7)):
            g = f"para-{i:03d}"
            t = self.add(
                content=mem,
                project=proj,
                memory_type=typ,
                subject=subj,
                domain=dom,
                role="target",
                group=g,
            )
            dis = []
            if near:
                dis.append(
                    self.add(
                        content=near,
                        project=proj,
                        memory_type=typ,
                        subject=subj,
                        domain=dom,
                        role="near_duplicate",
                        group=g,
                    ).key
                )
            self.queries.append(
                Query(
                    "paraphrase",
                    q,
                    {t.key: 2},
                    g,
                    dom,
                    distractors=dis,
                    memory_type=type_filter(g, typ),
                )
            )

    def keyword_overlap(self) -> None:
        for i, (dom, proj, typ, subj, mem, q, decoy) in enumerate(rows("keyword_overlap.txt", 7)):
            g = f"kwov-{i:03d}"
            t = self.add(
                content=mem,
                project=proj,
                memory_type=typ,
                subject=subj,
                domain=dom,
                role="target",
                group=g,
            )
            d = self.add(
                content=decoy, project=proj, memory_type=typ, domain=dom, role="decoy", group=g
            )
            self.queries.append(
                Query(
                    "keyword_overlap",
                    q,
                    {t.key: 2},
                    g,
                    dom,
                    distractors=[d.key],
                    memory_type=type_filter(g, typ),
                )
            )

    def superseded(self) -> None:
        for i, (mode, dom, proj, typ, subj, old, new, q) in enumerate(rows("superseded.txt", 8)):
            g = f"sup-{i:03d}"
            t_old = self.rng.uniform(0.0, 0.6)
            o = self.add(
                content=old,
                project=proj,
                memory_type=typ,
                subject=subj,
                domain=dom,
                role="stale",
                group=g,
                time=t_old,
            )
            n = self.add(
                content=new,
                project=proj,
                memory_type=typ,
                subject=subj,
                domain=dom,
                role="target",
                group=g,
                time=self.rng.uniform(t_old + 0.05, 1.0),
                supersedes=o.key if mode == "sup" else None,
            )
            self.queries.append(
                Query("superseded", q, {n.key: 2}, g, dom, stale=[o.key] if mode == "live" else [])
            )

    def project_filtered(self) -> None:
        for i, (dom, typ, subj, tmpl, q, values) in enumerate(rows("project_filtered.txt", 6)):
            g = f"proj-{i:03d}"
            by_project: dict[str, Memory] = {}
            for item in values.split(";"):
                proj, v = (s.strip() for s in item.split("=", 1))
                by_project[proj] = self.add(
                    content=tmpl.replace("{v}", v),
                    project=proj,
                    memory_type=typ,
                    subject=subj,
                    domain=dom,
                    role="target",
                    group=g,
                )
            projects = list(by_project)
            for proj in self.rng.sample(projects, 3 if len(projects) >= 5 else 2):
                others = [m.key for p, m in by_project.items() if p != proj]
                self.queries.append(
                    Query(
                        "project_filtered",
                        q,
                        {by_project[proj].key: 2},
                        g,
                        dom,
                        project=proj,
                        distractors=others,
                    )
                )

    def project_notes(self) -> None:
        """Everyday notes in every consulting project: same topics, small differences."""
        notes = [
            line.strip()
            for line in (CONTENT / "project_notes.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")
        ]
        for proj in ("brightline", "kestrel", "marlow", "quanta", "tidewater"):
            for note in notes:
                pick = {
                    m.group(1): self.rng.choice(m.group(2).split("|"))
                    for m in SLOT_RE.finditer(note)
                    if m.group(2)
                }
                self.add(
                    content=fill(note, {}, pick, {}),
                    project=proj,
                    memory_type="note",
                    domain="consulting",
                    role="filler",
                    group=f"notes-{proj}",
                )

    # --- exact identifiers --------------------------------------------------------------------

    def exact_ids(self) -> None:
        kinds: dict[str, dict[str, Any]] = {}
        cur = None
        for line in (CONTENT / "id_frames.txt").read_text().splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            m = re.match(r"\[(\w+)\]\s*(.*)$", line)
            if m:
                proj, plain, qs = (s.strip() for s in m.group(2).split(" | "))
                cur = kinds[m.group(1)] = {
                    "project": proj,
                    "plain": plain,
                    "queries": [s.strip() for s in qs.split(";")],
                    "frames": [],
                }
            elif cur is not None:
                cur["frames"].append(line.strip())
        used: set[str] = set()
        rng = self.rng

        def fresh(kind: str) -> str:
            while True:
                ident = make_id(kind, rng)
                if ident.lower() not in used:
                    used.add(ident.lower())
                    return ident

        def near(kind: str, ident: str) -> list[str]:
            out = []
            for cand in near_misses(kind, ident, rng):
                if cand.lower() not in used:
                    used.add(cand.lower())
                    out.append(cand)
            return out

        domain_of = {
            "platform": "ops",
            "payments": "ops",
            "mobile-app": "ops",
            "data-pipeline": "ops",
            "helios-web": "company",
            "finance": "finance",
        }
        pinned = {"ticket": ["OPS-4417"], "token": ["KW200"]}  # the issue's own examples
        n = 0
        for kind, spec in kinds.items():
            frames = list(spec["frames"])
            dom = domain_of[spec["project"]]
            per_kind = 14
            for j in range(per_kind):
                ident = pinned.get(kind, [])[j] if j < len(pinned.get(kind, [])) else fresh(kind)
                used.add(ident.lower())
                in_keywords = n % 2 == 1
                n += 1
                g = f"id-{kind}-{j:02d}"
                frame = frames[j % len(frames)]
                t = self.id_memory(frame, ident, spec, kind, dom, in_keywords, "target", g)
                dis = []
                # near misses go into other frames of the same kind: same shape, one detail off
                for k, miss in enumerate(near(kind, ident)):
                    other = frames[(j + 1 + k) % len(frames)]
                    dis.append(
                        self.id_memory(
                            other, miss, spec, kind, dom, rng.random() < 0.5, "near_miss", g
                        ).key
                    )
                # bare or phrase on a different cycle than content/keywords: all four pairs occur
                phrase = rng.choice(spec["queries"]) if (j // 2) % 2 else "{id}"
                self.queries.append(
                    Query(
                        "exact_id",
                        phrase.replace("{id}", ident),
                        {t.key: 2},
                        g,
                        dom,
                        distractors=dis,
                        identifier=ident,
                    )
                )
            for _ in range(10):  # background memories of the same kind
                frame = rng.choice(frames)
                self.id_memory(
                    frame,
                    fresh(kind),
                    spec,
                    kind,
                    dom,
                    rng.random() < 0.5,
                    "filler",
                    f"id-{kind}-fill",
                )

    def id_memory(
        self,
        frame: str,
        ident: str,
        spec: dict[str, Any],
        kind: str,
        dom: str,
        in_keywords: bool,
        role: str,
        group: str,
    ) -> Memory:
        if in_keywords:
            text = frame.replace("{id}", spec["plain"])
            text = text[0].upper() + text[1:]
            keywords = [ident, *topical_keywords(text)]
        else:
            text = frame.replace("{id}", ident)
            keywords = topical_keywords(frame.replace("{id}", ""))
        # who noted it and when: real notes carry this, and it keeps two notes built from the
        # same sentence distinct (memory_set would store identical content only once)
        day = date(2024, 1, 1) + timedelta(days=self.rng.randint(0, 700))
        text += f" Noted by {self.rng.choice(NOTERS)} on {day.isoformat()}."
        subject = {
            "ticket": "Ticket notes",
            "error": "Payment error codes",
            "host": "Host inventory",
            "sku": "Product catalogue",
            "version": "App releases",
            "token": "Data markers",
            "invoice": "Invoices",
        }[kind]
        return self.add(
            content=text,
            project=spec["project"],
            memory_type="fact" if kind != "version" else "event",
            subject=subject,
            keywords=keywords,
            domain=dom,
            role=role,
            group=group,
        )

    # --- conversations --------------------------------------------------------------------------

    def conversations(self) -> None:
        events = parse_events()
        generic = parse_generic()
        for conv in rows("conversations.txt", 7):
            ConversationWriter(self, conv, events, generic).write()


NOTERS = ["Priya", "Jonas", "Aiko", "Marta", "Lars", "Dev", "Nadia", "Pablo", "Sam", "Ines"]
ID_PREFIXES = ["OPS", "PAY", "WEB", "MOB", "DATA", "CRM"]
HOST_ROLES = ["db-replica", "kafka", "cache", "build", "mon", "ftp", "es-master", "pkg-mirror"]
SITES = ["fra", "dub", "ams", "iad"]
COLOURS = ["BLK", "WHT", "SGE", "RED", "CHR", "NAT"]


def make_id(kind: str, rng: random.Random) -> str:
    if kind == "ticket":
        return f"{rng.choice(ID_PREFIXES)}-{rng.randint(100, 9999)}"
    if kind == "error":
        return f"E{rng.randint(1000, 9999)}"
    if kind == "host":
        return (
            f"{rng.choice(HOST_ROLES)}-{rng.randint(1, 29):02d}.{rng.choice(SITES)}.helios.internal"
        )
    if kind == "sku":
        return f"HX-{rng.randint(10000, 99999)}-{rng.choice(COLOURS)}"
    if kind == "version":
        return f"v{rng.randint(2, 7)}.{rng.randint(0, 19)}.{rng.randint(0, 9)}"
    if kind == "token":
        if rng.random() < 0.5:
            return f"KW{rng.randint(10, 999)}"
        return "".join(rng.choice("BCDFGHJKLMNPQRSTVWXZ") for _ in range(3)) + str(
            rng.randint(2, 99)
        )
    if kind == "invoice":
        return f"INV-{rng.randint(2021, 2025)}-{rng.randint(100, 99999):05d}"
    raise ValueError(kind)


def swap_digits(s: str, rng: random.Random) -> str:
    """Swap two adjacent different digits: 4417 -> 4471."""
    idx = [
        i for i in range(len(s) - 1) if s[i].isdigit() and s[i + 1].isdigit() and s[i] != s[i + 1]
    ]
    if not idx:
        return s + "0"
    i = idx[-1] if rng.random() < 0.6 else rng.choice(idx)
    return s[:i] + s[i + 1] + s[i] + s[i + 2 :]


def near_misses(kind: str, ident: str, rng: random.Random) -> list[str]:
    """One or two identifiers that differ from `ident` in one detail."""
    if kind == "ticket":
        prefix, num = ident.split("-")
        other = rng.choice([p for p in ID_PREFIXES if p != prefix])
        return [f"{prefix}-{swap_digits(num, rng)}", f"{other}-{num}"]
    if kind == "token" and ident.startswith("KW"):
        return [ident + "0", ident[:-1]]
    if kind == "token":
        return [ident[:-1] + str((int(ident[-1]) + 1) % 10)]
    if kind == "host":
        head, site, rest = ident.split(".", 2)
        role, nn = head.rsplit("-", 1)
        return [
            f"{role}-{swap_digits(nn, rng) if nn[0] != nn[1] else str(int(nn) + 10)}.{site}.{rest}",
            f"{head}.{rng.choice([s for s in SITES if s != site])}.{rest}",
        ]
    if kind == "version":
        major, minor, patch = ident[1:].split(".")
        return [f"v{major}.{minor}.{int(patch) + 10}", f"v{major}.{int(minor) + 1}.{patch}"]
    if kind == "sku":
        return [swap_digits(ident, rng)]
    if kind == "error":
        return [swap_digits(ident, rng)]
    if kind == "invoice":
        _, year, num = ident.split("-")
        return [f"INV-{int(year) - 1}-{num}"]
    return []


# --- conversation content ---------------------------------------------------------------------


@dataclass
class EventTurn:
    speaker: str  # "A" or "B"
    text: str
    answers: list[int]
    context: list[int]
    later: bool = False  # told in a later session


@dataclass
class Event:
    name: str
    pair: bool
    turns: list[EventTurn]
    questions: dict[int, tuple[str, bool]]


def parse_events() -> list[Event]:
    out: list[Event] = []
    for line in (CONTENT / "conversation_events.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        if line.startswith("=="):
            name, *flags = (s.strip() for s in line[2:].split("|"))
            out.append(Event(name, "pair" in flags, [], {}))
            continue
        m = re.match(r"Q(\d)(h?):\s*(.*)$", line)
        if m:
            out[-1].questions[int(m.group(1))] = (m.group(3), bool(m.group(2)))
            continue
        m = re.match(r"(L?)([AB])((?:\s+c?\d)*)\s*:\s*(.*)$", line)
        if not m:
            raise SystemExit(f"conversation_events.txt: cannot parse {line!r}")
        marks = m.group(3).split()
        out[-1].turns.append(
            EventTurn(
                m.group(2),
                m.group(4),
                [int(x) for x in marks if x.isdigit()],
                [int(x[1:]) for x in marks if x.startswith("c")],
                later=bool(m.group(1)),
            )
        )
    return out


def parse_generic() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    section = ""
    for line in (CONTENT / "conversation_generic.txt").read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        m = re.match(r"\[(\w+)\]$", line.strip())
        if m:
            section = m.group(1)
            out[section] = []
        else:
            out[section].append(line.strip())
    return out


SLOT_RE = re.compile(r"\{(\w+)(?:=([^}]*))?\}")


def fill(text: str, slots: dict[str, str], choose: dict[str, str], names: dict[str, str]) -> str:
    def sub(m: re.Match[str]) -> str:
        name, options = m.group(1), m.group(2)
        if name in names:
            return names[name]
        if options is not None and name not in slots:
            slots[name] = choose.get(name) or options.split("|")[0]
        return slots[name]

    return SLOT_RE.sub(sub, text)


def slot_options(event: Event) -> dict[str, list[str]]:
    opts: dict[str, list[str]] = {}
    for t in event.turns:
        for m in SLOT_RE.finditer(t.text):
            if m.group(2) is not None:
                opts[m.group(1)] = m.group(2).split("|")
    return opts


class ConversationWriter:
    def __init__(
        self, b: Builder, conv: list[str], events: list[Event], generic: dict[str, list[str]]
    ) -> None:
        self.b = b
        self.cid, s1, s2, start, sessions, per, self.split = conv
        self.names = [s1, s2]
        self.start = date.fromisoformat(start)
        self.sessions = int(sessions)
        self.per = int(per)
        self.events = events
        self.generic = generic
        self.rng = random.Random(f"{SEED}-{self.cid}")
        self.said: set[tuple[str, str]] = set()
        self.turns: list[Memory] = []
        self.pending: list[tuple[Any, ...]] = []  # (due session, turns, names, slots, ...)
        self.asked: list[tuple[str, bool, dict[str, int]]] = []

    def unique(self, speaker: str, make: Any) -> str:
        """A generic line this speaker has not said yet in this conversation (the product
        deduplicates identical content within a project)."""
        for _ in range(200):
            text = make()
            if (speaker, text) not in self.said:
                self.said.add((speaker, text))
                return text
        raise SystemExit(f"{self.cid}: ran out of generic lines for {speaker}")

    def reaction(self, speaker: str, other: str) -> str:
        g, r = self.generic, self.rng

        def make() -> str:
            if r.random() < 0.3:
                return r.choice(g["solo"])
            text = f"{r.choice(g['react_start'])}, {r.choice(g['react_body'])}"
            if r.random() < 0.6:
                text += " " + r.choice(g["react_follow"])
            return text

        return self.unique(speaker, make)

    def pick(self, speaker: str, section: str, other: str) -> str:
        return self.unique(
            speaker, lambda: self.rng.choice(self.generic[section]).replace("{other}", other)
        )

    def turn(
        self, speaker: str, text: str, session: int, when: str, t: float, generic: bool
    ) -> Memory:
        m = self.b.add(
            content=f"{speaker}: {text}",
            project=self.cid,
            memory_type="conversation",
            subject=when,
            domain="conversation",
            role="generic_turn" if generic else "turn",
            group=self.cid,
            source_type="conversation",
            source_session_id=f"{self.cid}-s{session:02d}",
            time=t,
        )
        self.turns.append(m)
        return m

    def assign(self) -> list[tuple[int, Event, dict[str, str]]]:
        """(speaker index, event, chosen slot values) for every told event."""
        r = self.rng
        pool = list(self.events)
        r.shuffle(pool)
        first = pool[: self.per]
        rest = pool[self.per :]
        second = [e for e in first if e.pair and r.random() < 0.5]
        second += rest[: self.per - len(second)]
        told: list[tuple[int, Event, dict[str, str]]] = []
        chosen: dict[str, dict[str, str]] = {}
        for who, evs in ((0, first), (1, second)):
            for e in evs:
                opts = slot_options(e)
                prev = chosen.get(e.name, {})
                pick = {}
                for name, values in opts.items():
                    left = [v for v in values if v != prev.get(name)] or values
                    pick[name] = r.choice(left)
                chosen[e.name] = pick
                told.append((who, e, pick))
        r.shuffle(told)
        # a pair told twice: keep the two tellings in different sessions
        return told

    def write(self) -> None:
        r = self.rng
        told = self.assign()
        per_session = [told[i :: self.sessions] for i in range(self.sessions)]
        day = self.start
        base = r.uniform(0.0, 0.3)
        for s, items in enumerate(per_session, start=1):
            if s > 1:
                day += timedelta(days=r.randint(4, 30))
            when = f"{day.day} {day.strftime('%B %Y')}"
            t = base + 0.65 * (s - 1) / self.sessions
            opener = (s + (0 if self.cid < "conv-05" else 1)) % 2
            a, b = self.names[opener], self.names[1 - opener]
            self.turn(a, self.pick(a, "open", b), s, when, t, True)
            self.turn(b, self.pick(b, "open_reply", a), s, when, t, True)
            due = [p for p in self.pending if p[0] <= s]
            self.pending = [p for p in self.pending if p[0] > s]
            steps: list[Any] = [(self.tell, w) for w in items]
            steps += [(self.follow_up, p[1:]) for p in due]
            r.shuffle(steps)
            for fn, step_args in steps:
                if r.random() < 0.35:
                    self.small_talk(s, when, t)
                fn(s, when, t, *step_args)
                if r.random() < 0.3:
                    x = self.names[r.randint(0, 1)]
                    self.turn(x, self.reaction(x, self.other(x)), s, when, t, True)
            self.turn(a, self.pick(a, "close", b), s, when, t, True)
            self.turn(b, self.pick(b, "close_reply", a), s, when, t, True)
        for qtext, hard, answers in self.asked:
            if any(g == 2 for g in answers.values()):  # a follow-up past the last session: none
                self.b.queries.append(
                    Query(
                        "conversation",
                        qtext,
                        answers,
                        self.cid,
                        "conversation",
                        split=self.split,
                        project=self.cid,
                        hard=hard,
                    )
                )

    def other(self, name: str) -> str:
        return self.names[1 - self.names.index(name)]

    def small_talk(self, s: int, when: str, t: float) -> None:
        r = self.rng
        x = self.names[r.randint(0, 1)]
        y = self.other(x)
        for _ in range(50):
            line, reply = r.choice(self.generic["small_talk"]).split(" || ")
            if (x, line) not in self.said and (y, reply) not in self.said:
                self.said.update({(x, line), (y, reply)})
                self.turn(x, line, s, when, t, True)
                self.turn(y, reply, s, when, t, True)
                return

    def say(
        self,
        s: int,
        when: str,
        t: float,
        et: EventTurn,
        names: dict[str, str],
        slots: dict[str, str],
        pick: dict[str, str],
        answers: dict[int, dict[str, int]],
    ) -> None:
        speaker = names[et.speaker]
        if et.text == "*":
            self.turn(
                speaker,
                self.reaction(speaker, names["B" if et.speaker == "A" else "A"]),
                s,
                when,
                t,
                True,
            )
            return
        text = fill(et.text, slots, pick, names)
        m = self.turn(speaker, text, s, when, t, False)
        self.said.add((speaker, text))
        for q in et.answers:
            answers[q][m.key] = 2
        for q in et.context:
            answers[q].setdefault(m.key, 1)

    def tell(
        self, s: int, when: str, t: float, who: int, event: Event, pick: dict[str, str]
    ) -> None:
        a, b = self.names[who], self.names[1 - who]
        names = {"A": a, "B": b}
        slots: dict[str, str] = {}
        answers: dict[int, dict[str, int]] = {q: {} for q in event.questions}
        for et in event.turns:
            if not et.later:
                self.say(s, when, t, et, names, slots, pick, answers)
        later = [et for et in event.turns if et.later]
        if later:
            self.pending.append((s + self.rng.randint(1, 3), later, names, slots, pick, answers))
        if self.rng.random() < 0.15:
            return  # a told event nobody asks about: its turns stay as distractors
        for q, (qtext, hard) in event.questions.items():
            self.asked.append((fill(qtext, slots, pick, names), hard, answers[q]))

    def follow_up(
        self,
        s: int,
        when: str,
        t: float,
        later: list[EventTurn],
        names: dict[str, str],
        slots: dict[str, str],
        pick: dict[str, str],
        answers: dict[int, dict[str, int]],
    ) -> None:
        for et in later:
            self.say(s, when, t, et, names, slots, pick, answers)


def build() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    b = Builder()
    b.paraphrase()
    b.keyword_overlap()
    b.superseded()
    b.project_filtered()
    b.project_notes()
    b.exact_ids()
    b.conversations()
    # Insertion order: a shared timeline, so domains interleave the way an agent's memories do;
    # each conversation keeps its turn order, an update comes after what it updates.
    order = sorted(b.memories, key=lambda m: (m.time, m.seq))
    pos = {m.key: i for i, m in enumerate(order)}
    for m in order:
        if m.supersedes and pos[m.supersedes] > pos[m.key]:
            raise SystemExit(f"{m.key} would be stored before {m.supersedes}")
    # Stable public ids by insertion position.
    rename = {m.key: f"m{i:05d}" for i, m in enumerate(order, start=1)}
    memories = []
    for m in order:
        rec = m.record()
        rec["id"] = rename[m.key]
        if m.supersedes:
            rec["supersedes"] = rename[m.supersedes]
        memories.append(rec)
    queries = []
    for i, q in enumerate(b.queries, start=1):
        q.split = q.split or hash_split(q.group)
        q.targets = {rename[k]: v for k, v in q.targets.items()}
        q.stale = [rename[k] for k in q.stale]
        q.distractors = [rename[k] for k in q.distractors]
        queries.append(q.record(f"q{i:04d}"))
    return memories, queries


def dumps(items: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(x, ensure_ascii=False, sort_keys=False) + "\n" for x in items)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="fail if the committed files differ")
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)
    memories, queries = build()
    files = {"memories.jsonl": dumps(memories), "queries.jsonl": dumps(queries)}
    if args.check:
        stale = [
            n
            for n, body in files.items()
            if not (args.out / n).exists() or (args.out / n).read_text() != body
        ]
        if stale:
            print(f"stale: {', '.join(stale)}; run python bench/quality/generate.py")
            return 1
        return 0
    for name, body in files.items():
        (args.out / name).write_text(body)
    cats: dict[str, int] = {}
    for q in queries:
        cats[q["category"]] = cats.get(q["category"], 0) + 1
    print(
        f"{len(memories)} memories, {len(queries)} queries: "
        + ", ".join(f"{k} {v}" for k, v in cats.items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
