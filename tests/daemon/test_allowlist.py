"""The allowlist renders the provider's IP lists as firewall rules an operator can load."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from daemon.domain.state import KnownIpList
from daemon.provider.allowlist import AllowlistError, render, render_file, replace_file

LISTS = {"static": ["34.67.39.103", "34.67.39.103", "2001:db8::/64"], "dynamic": ["10.0.0.0/8"]}


def test_plain_lists_each_network_once_ipv4_first() -> None:
    """Plain output has one network per line, duplicates merged, IPv4 before IPv6."""
    assert render(LISTS, "plain") == "10.0.0.0/8\n34.67.39.103/32\n2001:db8::/64\n"


def test_json_keeps_lists_apart() -> None:
    """JSON output keeps the static and dynamic lists separate."""
    text = render(LISTS, "json")
    assert text.endswith("}\n")  # a file's last line ends with a newline, as every format's
    doc = json.loads(text)
    assert doc["lists"]["static"] == ["34.67.39.103/32", "2001:db8::/64"]
    assert doc["lists"]["dynamic"] == ["10.0.0.0/8"]


def test_nftables_has_interval_sets_per_family() -> None:
    """nftables output declares one interval set per address family with the elements."""
    out = render(LISTS, "nftables")
    # The table and sets the firewall's own path (systemd/staticipd-apply-allowlist) loads.
    assert "table inet staticipd {" in out
    assert "set allowed4 {" in out
    assert "set allowed6 {" in out
    assert "type ipv4_addr; flags interval;" in out
    assert "elements = { 10.0.0.0/8, 34.67.39.103/32 }" in out
    assert "elements = { 2001:db8::/64 }" in out


def test_iptables_restore_chain() -> None:
    """iptables output is an iptables-restore file with an ACCEPT rule per IPv4 network."""
    out = render(LISTS, "iptables")
    assert "-A STATICIPD -s 34.67.39.103/32 -j ACCEPT" in out
    assert out.count("COMMIT") == 2


def test_garbage_address_is_refused() -> None:
    """An entry that is not an address never becomes a firewall rule."""
    with pytest.raises(AllowlistError, match="not an IP address"):
        render({"static": ["1.2.3.4; DROP"]}, "plain")


def test_allowlist_file_names_the_lists_and_their_latest_change() -> None:
    """The allowlist file starts with two comment lines (lists, latest change), then networks."""
    day1, day2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)
    lists = {
        "dynamic": KnownIpList(addresses=("10.0.0.1",), changed_at=day2),
        "static": KnownIpList(addresses=("2001:db8::1",), changed_at=day1),
    }
    assert render_file(lists) == (
        "# staticipd allowlist: provider IP lists dynamic, static\n"
        "# changed_at: 2026-01-02T00:00:00+00:00\n"
        "10.0.0.1/32\n2001:db8::1/128\n"
    )


def test_replaced_file_is_never_seen_half_written(tmp_path: Path) -> None:
    """A reader polling the file while it is replaced again and again only ever sees a whole
    version, and the last version is what stays."""
    path = tmp_path / "allowlist.txt"
    versions = [
        f"# version {i}\n" + "".join(f"10.{i}.{n // 256}.{n % 256}/32\n" for n in range(4000))
        for i in range(30)
    ]
    replace_file(path, versions[0])
    seen: set[str] = set()
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.add(path.read_text())

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for text in versions[1:]:
            assert replace_file(path, text) is True
    finally:
        done.set()
        reader.join()
    assert seen <= set(versions)
    assert path.read_text() == versions[-1]
    assert [p.name for p in tmp_path.iterdir()] == ["allowlist.txt"]  # no temporary left


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    """Writing the same allowlist again leaves the file (and its watchers) alone."""
    path = tmp_path / "allowlist.txt"
    assert replace_file(path, "10.0.0.1/32\n") is True
    inode = path.stat().st_ino
    assert replace_file(path, "10.0.0.1/32\n") is False
    assert path.stat().st_ino == inode


def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """If the new version cannot be made durable, the old file stays whole and no temporary
    file is left behind."""
    path = tmp_path / "allowlist.txt"
    replace_file(path, "10.0.0.1/32\n")

    def no_fsync(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("daemon.provider.allowlist.os.fsync", no_fsync)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, "10.0.0.2/32\n")
    assert path.read_text() == "10.0.0.1/32\n"
    assert [p.name for p in tmp_path.iterdir()] == ["allowlist.txt"]
