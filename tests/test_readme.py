"""README.md's examples run: its configuration loads, its commands and routes exist."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import get_args, get_type_hints

import msgspec
import pytest

from daemon import exitcodes
from daemon.cli.main import build_parser
from daemon.config import load_config
from daemon.http.ingest import AuthEventBody
from daemon.provider.standardwebhooks import decode_secret
from daemon.runtime.audit import MoveFinding

README = (Path(__file__).parent.parent / "README.md").read_text()


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_quick_start_is_exactly_two_commands() -> None:
    """The quick start is the two commands a newcomer types: make demo, make test."""
    quick = README.split("## Quick start", 1)[1]
    first_block = re.search(r"```sh\n(.*?)```", quick, flags=re.S)
    assert first_block is not None
    commands = [line.split("#")[0].strip() for line in first_block.group(1).splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]


def test_configuration_example_loads(tmp_path: Path) -> None:
    """The README's TOML example is a valid configuration with the values it shows."""
    (toml,) = blocks("toml")
    path = tmp_path / "staticipd.toml"
    path.write_text(toml)
    config = load_config(path, {})
    assert config.listen == "127.0.0.1:8750"
    assert config.database.synchronous == "FULL"
    assert config.migration.delay_seconds == 1800


def test_configuration_example_shows_every_key() -> None:
    """Each section of the example lists every key the daemon reads in that section."""
    (toml,) = blocks("toml")
    example = tomllib.loads(toml)
    defaults = load_config(None, {})
    for name in defaults.__struct_fields__:
        section = getattr(defaults, name)
        if isinstance(section, msgspec.Struct):
            shown = set(example.get(name, {}))
            assert shown == set(section.__struct_fields__), (
                name,
                shown ^ set(section.__struct_fields__),
            )


def test_every_documented_command_exists() -> None:
    """Every `staticipd <command>` the README shows is a real subcommand."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    known = set(subparsers.choices)  # type: ignore[union-attr]
    documented = set(re.findall(r"(?:^|`|/)staticipd ([a-z][a-z-]*)", README, flags=re.M))
    assert {"serve", "demo", "verify", "audit", "replay"} <= documented
    assert documented <= known, documented - known


@pytest.mark.anyio
async def test_every_documented_route_exists() -> None:
    """Every route in the README's HTTP API table is served by the listener."""
    from daemon.http import ingest, openapi, operator, server

    table = README.split("## HTTP API", 1)[1].split("\n\n**", 1)[0]
    documented = {
        (m, re.sub(r"\?.*", "", p).replace("\\|", "|"))
        for m, p in re.findall(r"^\| `(GET|POST) ([^`]+)`", table, flags=re.M)
    }
    served = set()
    for routes in (server.routes, ingest.routes, operator.routes, openapi.routes):
        for route in routes:
            served.add((route.method, route.path))  # type: ignore[attr-defined]
    normalised = {
        (
            m,
            p.replace("{account_id}", "{id}")
            .replace("{command:", "")
            .replace("resolve}", "resolve"),
        )
        for m, p in served
    }
    assert documented == normalised, documented ^ normalised


def test_verify_names_the_kinds_and_fields_of_a_bad_move_as_the_code_reports_them() -> None:
    """The bad-move kinds and `--json` fields README promises for `verify` are those it reports."""
    text = " ".join(
        README.split("In the same pass over the rows, `verify`", 1)[1].split("\n\n")[0].split()
    )
    kinds = re.search(r"KIND being (.*?) \(a `StateChanged`", text)
    fields = re.search(r"under `\"moves\"` \((.*?)\) next to", text)
    assert kinds is not None
    assert fields is not None
    documented_kinds = re.findall(r"`(\w+)`", kinds.group(1))
    assert documented_kinds == list(get_args(get_type_hints(MoveFinding)["kind"]))
    assert re.findall(r"`(\w+)`", fields.group(1)) == list(MoveFinding.__struct_fields__)


def documented_invocations() -> list[tuple[str, str]]:
    """(subcommand, the rest) of each `staticipd <subcommand> ...` README shows: the lines of
    its shell blocks (comments dropped) and its inline code spans."""
    shown = [line.split("#")[0] for block in blocks("sh") for line in block.splitlines()]
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    shown += re.findall(r"`([^`]*staticipd [^`]*)`", prose)
    found = []
    for text in shown:
        match = re.search(r"staticipd ([a-z][a-z-]*)(.*)", text, flags=re.S)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def test_every_documented_option_exists_with_the_choices_shown() -> None:
    """Each `--option` README shows after a subcommand is one it takes, with the `a|b` choices."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    commands = subparsers.choices  # type: ignore[union-attr]
    checked = 0
    for command, rest in documented_invocations():
        if command not in commands:
            continue  # test_every_documented_command_exists names it
        options = {o: a for a in commands[command]._actions for o in a.option_strings}
        for option, choices in re.findall(r"(--[a-z][a-z-]*)(?: ([a-z]+(?:\|[a-z]+)+))?", rest):
            assert option in options, f"staticipd {command} has no {option}"
            if choices:
                assert tuple(choices.split("|")) == tuple(options[option].choices), option
            checked += 1
    assert checked >= 15  # the shell blocks and the demo's options were read


def test_the_exit_statuses_are_the_ones_the_commands_return() -> None:
    """README's "Exit status" sentence gives the numbers daemon/exitcodes.py names."""
    sentence = " ".join(README.split("Exit status: ", 1)[1].split(", said in one")[0].split())
    numbers = re.findall(r"(?:^|, )(\d+) (fine|the check found a problem|usage)", sentence)
    assert numbers == [
        (str(exitcodes.OK), "fine"),
        (str(exitcodes.PROBLEM), "the check found a problem"),
        (str(exitcodes.USAGE), "usage"),
    ]


def test_where_things_live_names_real_files_and_every_room() -> None:
    """README's map of the tree names files that exist in the room it puts them in, and names
    every sub-package and module directly under daemon/."""
    root = Path(__file__).parent.parent
    tree = README.split("## Where things live", 1)[1].split("```", 2)[1]
    room = ""
    named: set[str] = set()
    for line in tree.splitlines():
        if match := re.match(r"^((?:daemon|eventstore)/[\w/.]*)", line):
            room = match.group(1).rstrip("/")
            named.add(room)
            if room.endswith(".py"):  # a module of daemon/ itself, or the plumbing's line of them
                room = ""
                head = line.split("  ", 1)[0]
                named |= {f"daemon/{w}" for w in re.findall(r"\b\w+\.py\b", head)}
        elif (match := re.match(r"^  (\w+(?:\.py|/))", line)) and room:
            named.add(f"{room}/{match.group(1).rstrip('/')}")
    assert [n for n in sorted(named) if not (root / n).exists()] == []
    daemon = root / "daemon"
    parts = {
        f"daemon/{p.name}"
        for p in daemon.iterdir()
        if (p.is_dir() and (p / "__init__.py").exists())
        or (p.suffix == ".py" and not p.name.startswith("__"))
    }
    assert sorted(parts - named) == []


def test_the_real_host_recipe_makes_secrets_and_requests_the_daemon_takes(tmp_path: Path) -> None:
    """The recipe's key commands make a `whsec_` key and tokens the daemon reads, and its curl
    body is an auth event the daemon accepts."""
    recipe = README.split("### On a real host, step by step", 1)[1].split("\n### ", 1)[0]
    setup, calls = blocks_in(recipe)
    whsec = re.search(r"python3 -c '(.*?)' > notify_secret", setup)
    token = re.search(r"new\(\) \{ python3 -c '(.*?)'; \}", setup)
    assert whsec is not None
    assert token is not None
    run = [sys.executable, "-c"]
    key = subprocess.run([*run, whsec.group(1)], capture_output=True, text=True, check=True)
    assert key.stdout.startswith("whsec_")
    assert len(decode_secret(key.stdout.strip())) == 32
    made = subprocess.run([*run, token.group(1)], capture_output=True, text=True, check=True)
    assert len(made.stdout.strip()) >= 32
    body = re.search(r"-d '(\{.*?\})'", calls)
    assert body is not None
    event = msgspec.json.decode(body.group(1).encode(), type=AuthEventBody)
    assert event.account_id == "<account id>"
    assert "/v1/summary" in calls


def blocks_in(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, flags=re.S)


def test_every_subcommand_help_describes_it_and_shows_its_defaults() -> None:
    """`staticipd COMMAND --help` starts with what the command does, and every option that has
    a default says it."""
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert command.description, name
        for action in command._actions:
            if action.default not in (None, False, [], argparse.SUPPRESS):
                assert action.help is not None, (name, action.dest)
                assert "default" in command._get_formatter()._expand_help(action) or (
                    "default" in action.help
                ), (name, action.dest)


def test_the_allowlist_file_example_is_what_the_daemon_writes() -> None:
    """README's example allowlist file is byte for byte what the daemon writes for those lists."""
    from datetime import datetime

    from daemon.domain.state import KnownIpList
    from daemon.provider.allowlist import render_file

    part = README.split("#### The allowlist file", 1)[1]
    example = re.search(r"```text\n(.*?)```", part, flags=re.S)
    assert example is not None
    lines = example.group(1).splitlines()
    kinds = lines[0].removeprefix("# staticipd allowlist: provider IP lists ").split(", ")
    changed = datetime.fromisoformat(lines[1].removeprefix("# changed_at: "))
    addresses = tuple(line.split("/")[0] if line.endswith(("/32", "/128")) else line
                      for line in lines[2:])  # fmt: skip
    lists = {kind: KnownIpList(addresses=addresses, changed_at=changed) for kind in kinds}
    assert render_file(lists) == example.group(1)


def postgres_setup_sql(role: str, password: str) -> list[str]:
    """The statements of README's "PostgreSQL" setup: the daemon's role (created when missing,
    with `password`) and the grants to it, as README gives them, for tests to run."""
    section = README.split("### PostgreSQL", 1)[1].split("\n## ", 1)[0]
    sql = re.findall(r"```sql\n(.*?)```", section, flags=re.S)
    grants = [s.strip() for s in sql[1].split(";") if s.strip()]
    create = (
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{role}') THEN"
        f" CREATE ROLE {role} LOGIN PASSWORD '{password}'; END IF; END $$"
    )
    return [create, *(g.replace(" staticipd;", f" {role};") for g in grants)]
