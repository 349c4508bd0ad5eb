"""The shipped systemd units load cleanly and keep their sandbox; the firewall script loads a list.

`systemd-analyze verify` and `systemd-analyze security --offline=true` run over every unit in
systemd/ where systemd-analyze (systemd 250 or later, for `--offline`) is installed; elsewhere
these tests are skipped, saying why (`.ci/run` installs systemd when it can).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parent.parent / "systemd"
MAX_EXPOSURE = 1.5  # README.md, "The unit's sandbox"
EXEC = re.compile(r"^(Exec\w+=[-@:+!]*)(/\S+)", flags=re.M)


def analyze() -> str:
    """The systemd-analyze binary, or skip the test saying what is missing."""
    binary = shutil.which("systemd-analyze")
    if binary is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    number = re.match(r"systemd (\d+)", version.stdout)
    if number is None or int(number.group(1)) < 250:
        pytest.skip(f"systemd-analyze too old for --offline: {version.stdout.splitlines()[0]}")
    return binary


def unit_files() -> list[Path]:
    return sorted(p for p in UNITS.iterdir() if p.suffix in {".service", ".path"})


def test_every_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """systemd accepts every shipped unit without an error or a warning."""
    binary = analyze()
    stand_in = tmp_path / "stand-in"
    stand_in.write_text("#!/bin/sh\n")
    stand_in.chmod(0o755)
    copies = []
    for unit in unit_files():
        # verify insists each program exists: those installed elsewhere become a stand-in.
        text = EXEC.sub(
            lambda m: m.group(1) + (m.group(2) if Path(m.group(2)).exists() else str(stand_in)),
            unit.read_text(),
        )
        (tmp_path / unit.name).write_text(text)
        copies.append(unit.name)
    assert {"staticipd.service", "staticipd-firewall.service", "staticipd-firewall.path"} <= set(
        copies
    )
    result = subprocess.run(
        [binary, "verify", *copies], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert (result.returncode, result.stderr) == (0, ""), result.stdout


@pytest.mark.parametrize("unit", [p.name for p in unit_files() if p.suffix == ".service"])
def test_service_exposure_is_at_most_the_promised_level(unit: str) -> None:
    """`systemd-analyze security` scores each shipped service at an exposure of 1.5 or lower."""
    binary = analyze()
    result = subprocess.run(
        [binary, "security", "--offline=true", "--no-pager", str(UNITS / unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = re.search(rf"Overall exposure level for {re.escape(unit)}: (\d+\.\d+)", result.stdout)
    assert found is not None, result.stdout + result.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, result.stdout
    # README gives the score measured with one systemd version; others may weigh differently.
    readme = (UNITS.parent / "README.md").read_text()
    stated = re.search(r"at an exposure of\s+(\d+\.\d+) \(\"OK\"\) with systemd (\d+)", readme)
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, check=True)
    assert stated is not None
    if unit == "staticipd.service" and version.stdout.startswith(f"systemd {stated.group(2)} "):
        assert found.group(1) == stated.group(1), unit


def test_firewall_script_replaces_both_sets_in_one_transaction(tmp_path: Path) -> None:
    """The example script hands nft one script that empties both sets and adds every network."""
    allowlist = tmp_path / "allowlist.txt"
    allowlist.write_text(
        "# staticipd allowlist: provider IP lists dynamic, static\n"
        "# changed_at: 2026-01-01T00:00:00+00:00\n"
        "192.0.2.7/32\n198.51.100.0/24\n2001:db8::1/128\n"
    )
    captured = tmp_path / "nft-input"
    fake_nft = tmp_path / "nft"
    fake_nft.write_text(f'#!/bin/sh\n[ "$*" = "-f -" ] && cat > {captured}\n')
    fake_nft.chmod(0o755)
    subprocess.run(
        [str(UNITS / "staticipd-apply-allowlist"), str(allowlist)],
        env={"NFT": str(fake_nft), "PATH": "/usr/bin:/bin"}, check=True,
    )  # fmt: skip
    lines = captured.read_text().splitlines()
    assert lines[:5] == [
        "add table inet staticipd",
        "add set inet staticipd allowed4 { type ipv4_addr; flags interval; auto-merge; }",
        "add set inet staticipd allowed6 { type ipv6_addr; flags interval; auto-merge; }",
        "flush set inet staticipd allowed4",
        "flush set inet staticipd allowed6",
    ]
    assert lines[5:] == [
        "add element inet staticipd allowed4 { 192.0.2.7/32, 198.51.100.0/24 }",
        "add element inet staticipd allowed6 { 2001:db8::1/128 }",
    ]


def test_the_firewall_service_also_loads_the_file_at_boot() -> None:
    """A path unit fires on changes only and nftables sets live in the kernel only: the
    firewall service is enabled on its own too, loads after nftables.service, and is skipped
    (not failed) while the daemon has written no allowlist yet."""
    text = (UNITS / "staticipd-firewall.service").read_text()
    assert re.search(r"^\[Install\]\nWantedBy=multi-user\.target$", text, re.MULTILINE)
    assert "\nAfter=nftables.service\n" in text
    assert "\nConditionPathExists=/var/lib/staticipd/allowlist.txt\n" in text
    readme = (UNITS.parent / "README.md").read_text()
    assert "systemctl enable --now staticipd-firewall.path staticipd-firewall.service" in readme
