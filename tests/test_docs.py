"""The documents in docs/ say what the code does, where that can be checked mechanically."""

from __future__ import annotations

import hashlib
import re
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.domain import codec, events, inputs, triggers, vocabulary
from daemon.domain.decide import TIMER_DISPATCH
from eventstore import GENESIS, EventStore, NewEvent, schema

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"


def doc(name: str) -> str:
    return (DOCS / name).read_text()


def section(text: str, heading: str) -> str:
    """The body of the `## heading` section of a document."""
    match = re.search(rf"^## {re.escape(heading)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match is not None, f"no section {heading!r}"
    return match.group(1)


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(name: str) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", doc(name), flags=re.M)}


def repository_files() -> list[Path]:
    """The repository's own text files: code, tests, benchmarks, documents, README."""
    files = [ROOT / "README.md", *DOCS.glob("*.md")]
    for folder in ("daemon", "eventstore", "tests", "bench"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".py", ".md")]
    return files


def test_every_event_type_is_in_the_log_format() -> None:
    """Every event type the codec knows is named in docs/log-format.md."""
    text = doc("log-format.md")
    missing = [name for name in codec.EVENT_TYPES if f"`{name}`" not in text]
    assert missing == []


def test_every_column_of_the_events_table_is_in_the_log_format() -> None:
    """Every column of the events table is named in docs/log-format.md's table section."""
    create = re.search(r"CREATE TABLE events \((.*?)\n\);", schema.MIGRATIONS[1], flags=re.S)
    assert create is not None
    columns = [
        line.split()[0]
        for line in create.group(1).strip().splitlines()
        if line.strip() and not line.strip().startswith("UNIQUE")
    ]
    assert columns[0] == "position"
    assert columns[-1] == "hash"
    table = section(doc("log-format.md"), "The events table")
    assert [c for c in columns if f"`{c}`" not in table] == []


def test_the_append_only_triggers_and_upcasters_are_in_the_log_format() -> None:
    """The guard triggers and every upcast event type are named in docs/log-format.md."""
    text = doc("log-format.md")
    assert [t for t in schema.TRIGGERS if f"`{t}`" not in text] == []
    upcasting = section(text, "Schema versions and upcasting")
    assert [t for t, _ in codec.UPCASTERS if f"`{t}`" not in upcasting] == []


def test_every_trigger_is_in_the_provider_document() -> None:
    """Every (version, trigger) of the trigger table has a row in docs/provider.md's table."""
    table = section(doc("provider.md"), "The trigger table")
    rows = {
        (int(m.group(1)), m.group(2))
        for m in re.finditer(r"^\| (\d) \| `([^`]+)` \|", table, flags=re.M)
    }
    assert set(triggers.TRIGGERS) == rows


def test_states_flags_and_timer_purposes_are_in_the_state_machine_document() -> None:
    """Every state, flag and timer purpose of the domain is named in docs/state-machine.md."""
    text = doc("state-machine.md")
    named = [*vocabulary.STATES, *vocabulary.FLAGS, *vocabulary.TIMER_PURPOSES]
    assert [n for n in named if f"`{n}`" not in text] == []


def test_the_state_machine_document_names_the_inputs_of_the_code() -> None:
    """The inputs docs/state-machine.md lists are the domain's input types, each one of them."""
    text = section(doc("state-machine.md"), "What moves an account")
    rows = text.split("| input | from | first event |", 1)[1].split("\n\n", 1)[0]
    table = "".join(re.findall(r"^\| (`[^|]+) \|", rows, flags=re.M))
    documented = set(re.findall(r"`(\w+)`", table))
    account_inputs = {
        name
        for name, cls in vars(inputs).items()
        if isinstance(cls, type)
        and issubclass(cls, inputs.AccountInput)
        and cls is not inputs.AccountInput
    }
    assert documented == account_inputs


def test_the_timer_table_names_the_states_where_each_timer_acts() -> None:
    """docs/state-machine.md says, per timer purpose, the states in which its firing acts, as
    decide's dispatch on (purpose, state) has them."""
    text = section(doc("state-machine.md"), "Timers")
    documented: set[tuple[str, str]] = set()
    for row in re.findall(r"^\| `(\w+)` \|.*\| ([^|]*) \|$", text, flags=re.M):
        purpose, acts = row
        documented |= {(purpose, state) for state in re.findall(r"`(\w+)`", acts.split(":")[0])}
    assert documented == set(TIMER_DISPATCH)


def test_every_cited_docs_anchor_exists() -> None:
    """Every `docs/<file>.md#<anchor>` cited in the repository names a heading of that file."""
    cited = re.compile(r"(?:docs/)?((?:provider|state-machine|log-format)\.md)#([\w-]+)")
    broken = []
    for path in repository_files():
        for name, anchor in cited.findall(path.read_text()):
            if anchor not in anchors(name):
                broken.append(f"{path.relative_to(ROOT)}: {name}#{anchor}")
    assert broken == []


def test_nothing_cites_documents_outside_the_repository() -> None:
    """No file of the repository points at the reference notes kept outside it."""
    # Spelt in pieces, so that this line does not match what it looks for.
    outside = re.compile("|".join(("facts " + "§", "provider" + "-facts", "DESIGN" + r"\.md",
                                   "/" + "shared/", "§" + r"\d")))  # fmt: skip
    me = Path(__file__).resolve()
    found = [
        f"{path.relative_to(ROOT)}:{n}"
        for path in repository_files()
        if path.resolve() != me
        for n, line in enumerate(path.read_text().splitlines(), 1)
        if outside.search(line)
    ]
    assert found == []


def documented_fields() -> list[str]:
    """The canonical row's fields, in the order docs/log-format.md gives them."""
    chain = section(doc("log-format.md"), "The hash chain")
    match = re.search(r"Take the eight fields `([^`]+)`", chain)
    assert match is not None
    return [f.strip() for f in match.group(1).split(",")]


@pytest.mark.anyio
async def test_the_documented_hash_is_the_stored_hash(tmp_path: Path) -> None:
    """A row hash computed as docs/log-format.md describes equals the store's, row after row."""
    assert documented_fields() == [
        "stream", "version", "type", "schema", "event_id", "recorded_at", "data", "metadata",
    ]  # fmt: skip
    event = events.FlagRaised(
        account_id="acct-ä1", occurred_at=datetime(2026, 12, 4, tzinfo=UTC), flag="x", reason="é"
    )
    encoded = codec.encode_event(event)
    path = tmp_path / "log.db"
    async with EventStore.open(path) as store:
        for n in range(3):
            await store.append(
                [
                    NewEvent(
                        stream=codec.stream_of(event),
                        type=encoded.type,
                        data=encoded.data,
                        schema=encoded.schema,
                        metadata=b'{"source":"test","input_id":"t"}',
                        event_id=f"t{n}#0",
                    )
                ]
            )
    columns = ", ".join(documented_fields())
    with sqlite3.connect(path) as conn:
        rows = conn.execute(
            f"SELECT {columns}, prev_hash, hash FROM events ORDER BY position"  # noqa: S608
        ).fetchall()
    prev = "0" * 64
    assert prev == GENESIS
    for *values, stored_prev, stored_hash in rows:
        canonical = b""
        for value in values:
            raw = str(value).encode("utf-8")
            canonical += len(raw).to_bytes(4, "big") + raw
        assert stored_prev == prev
        assert hashlib.sha256(prev.encode("ascii") + canonical).hexdigest() == stored_hash
        prev = stored_hash
    assert len(rows) == 3


def test_every_repository_path_the_documents_name_exists() -> None:
    """Every file or folder of the repository that README.md or docs/ names is really there."""
    texts = [
        ROOT / "README.md",
        ROOT / "bench" / "README.md",
        *sorted((ROOT / "docs").glob("*.md")),
    ]
    path = re.compile(r"\b(?:daemon|eventstore|bench|tests|systemd|docs)/[\w./-]*\w")
    missing = [
        f"{text.relative_to(ROOT)}: {name}"
        for text in texts
        for name in sorted(set(path.findall(text.read_text())))
        if not (ROOT / name).exists()
    ]
    assert missing == []
