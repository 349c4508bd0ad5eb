"""Renders the provider's IP lists as a firewall allowlist: plain, JSON, nftables or iptables.

The addresses come from the IP-list poller's observations in the log; anything that is not an
IPv4/IPv6 address or network is refused here rather than written into a firewall rule. The
daemon also keeps the allowlist file (`render_file`, written by `replace_file`) that a firewall
outside its sandbox reloads from (README.md, "The allowlist file").
"""

from __future__ import annotations

import ipaddress
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from datetime import datetime
from pathlib import Path

from daemon.domain.state import KnownIpList

FORMATS = ("json", "plain", "nftables", "iptables")

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class AllowlistError(ValueError):
    """An address from the provider that cannot become a firewall rule."""


def parse_networks(addresses: Iterable[str]) -> list[Network]:
    """Addresses or CIDR ranges, de-duplicated and sorted (IPv4 first)."""
    networks: set[Network] = set()
    for text in addresses:
        try:
            networks.add(ipaddress.ip_network(text.strip(), strict=False))
        except ValueError as exc:
            raise AllowlistError(f"not an IP address or network: {text!r}") from exc
    return sorted(networks, key=lambda n: (n.version, n))


def render_observed(ip_lists: Mapping[str, KnownIpList], fmt: str) -> str:
    """The allowlist of the lists the log has observed (`ApplicationState.ip_lists`), dated by
    the latest change."""
    changed = max((ip.changed_at for ip in ip_lists.values()), default=None)
    lists = {kind: ip.addresses for kind, ip in ip_lists.items()}
    return render(lists, fmt, updated_at=changed)


def render(
    lists: Mapping[str, Iterable[str]],
    fmt: str,
    *,
    updated_at: datetime | None = None,
    set_name: str = "staticipd",
) -> str:
    """`lists` maps a list kind (`static`, `dynamic`) to its addresses.

    nftables: the sets `allowed4` and `allowed6` of the table `inet <set_name>`, as the
    firewall's own path (systemd/staticipd-apply-allowlist) names them; iptables: the chain
    `<SET_NAME>`. JSON and the other formats end with a newline, as a file's last line does.
    """
    if fmt not in FORMATS:
        raise AllowlistError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    parsed = {kind: parse_networks(addrs) for kind, addrs in sorted(lists.items())}
    if fmt == "json":
        return (
            json.dumps(
                {
                    "updated_at": updated_at.isoformat() if updated_at else None,
                    "lists": {kind: [str(n) for n in nets] for kind, nets in parsed.items()},
                },
                indent=2,
            )
            + "\n"
        )
    every = parse_networks(str(n) for nets in parsed.values() for n in nets)
    if fmt == "plain":
        return "".join(f"{n}\n" for n in every)
    header = f"# staticipd allowlist ({', '.join(parsed) or 'empty'})"
    if updated_at is not None:
        header += f", provider lists as of {updated_at.isoformat()}"
    v4 = [str(n) for n in every if n.version == 4]
    v6 = [str(n) for n in every if n.version == 6]
    if fmt == "nftables":
        lines = [header, f"table inet {set_name} {{"]
        for family, nets in (("ipv4_addr", v4), ("ipv6_addr", v6)):
            suffix = "4" if family == "ipv4_addr" else "6"
            lines.append(f"  set allowed{suffix} {{")
            lines.append(f"    type {family}; flags interval;")
            if nets:
                lines.append(f"    elements = {{ {', '.join(nets)} }}")
            lines.append("  }")
        lines.append("}")
        return "\n".join(lines) + "\n"
    # iptables-restore syntax for a dedicated chain the operator jumps to from INPUT/OUTPUT.
    chain = set_name.upper()
    lines = [header, "*filter", f":{chain} - [0:0]", f"-F {chain}"]
    lines += [f"-A {chain} -s {net} -j ACCEPT" for net in v4]
    lines += ["COMMIT"]
    if v6:
        lines += ["# ip6tables-restore", "*filter", f":{chain} - [0:0]", f"-F {chain}"]
        lines += [f"-A {chain} -s {net} -j ACCEPT" for net in v6]
        lines += ["COMMIT"]
    return "\n".join(lines) + "\n"


def render_file(ip_lists: Mapping[str, KnownIpList]) -> str:
    """The allowlist file: two `#` lines naming the lists and the time of their latest change,
    then one network a line (IPv4 first), as the `plain` format."""
    changed = max((ip.changed_at for ip in ip_lists.values()), default=None)
    header = (
        f"# staticipd allowlist: provider IP lists {', '.join(sorted(ip_lists)) or 'none'}\n"
        f"# changed_at: {changed.isoformat() if changed else 'never'}\n"
    )
    return header + render_observed(ip_lists, "plain")


def replace_file(path: Path, text: str) -> bool:
    """Replace `path` with `text` so that a reader sees the old content or the new, never a
    part: a temporary file in the same directory, fsync, rename over `path`, fsync the
    directory. Mode 644 (the lists are not secret). False, and nothing written, when the file
    already holds `text`."""
    data = text.encode()
    try:
        if path.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fchmod(file.fileno(), 0o644)
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return True
