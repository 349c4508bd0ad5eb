"""The allowlist renders the provider's IP lists as firewall rules an operator can load."""

from __future__ import annotations

import json

import pytest

from daemon.provider.allowlist import AllowlistError, render

LISTS = {"static": ["34.67.39.103", "34.67.39.103", "2001:db8::/64"], "dynamic": ["10.0.0.0/8"]}


def test_plain_lists_each_network_once_ipv4_first() -> None:
    """Plain output has one network per line, duplicates merged, IPv4 before IPv6."""
    assert render(LISTS, "plain") == "10.0.0.0/8\n34.67.39.103/32\n2001:db8::/64\n"


def test_json_keeps_lists_apart() -> None:
    """JSON output keeps the static and dynamic lists separate."""
    doc = json.loads(render(LISTS, "json"))
    assert doc["lists"]["static"] == ["34.67.39.103/32", "2001:db8::/64"]
    assert doc["lists"]["dynamic"] == ["10.0.0.0/8"]


def test_nftables_has_interval_sets_per_family() -> None:
    """nftables output declares one interval set per address family with the elements."""
    out = render(LISTS, "nftables")
    assert "type ipv4_addr; flags interval;" in out
    assert "elements = { 10.0.0.0/8, 34.67.39.103/32 }" in out
    assert "elements = { 2001:db8::/64 }" in out


def test_iptables_restore_chain() -> None:
    """iptables output is an iptables-restore file with an ACCEPT rule per IPv4 network."""
    out = render(LISTS, "iptables")
    assert "-A NYLAS_SYNC -s 34.67.39.103/32 -j ACCEPT" in out
    assert out.count("COMMIT") == 2


def test_garbage_address_is_refused() -> None:
    """An entry that is not an address never becomes a firewall rule."""
    with pytest.raises(AllowlistError, match="not an IP address"):
        render({"static": ["1.2.3.4; DROP"]}, "plain")
