"""Benchmarks for the performance budget (bench/README.md): run all with `python -m bench`.

Each module is also runnable alone (`python -m bench.bench_ingest --help`). This package holds
the few helpers they share: the secret files and `STATICIPD_*` settings of a benchmark daemon,
and a plain-text table printer.
"""

from __future__ import annotations

import os
import secrets as pysecrets
from collections.abc import Sequence
from pathlib import Path

from daemon.cli import demo

__all__ = ["daemon_env", "print_table", "rss_mib", "write_secrets"]


def write_secrets(directory: Path) -> dict[str, str]:
    """Fresh secret files (mode 600) as `load_secrets` expects them; returns the values."""
    return demo.write_secrets(directory, client_secret=pysecrets.token_hex(16))


def daemon_env(database: Path, secrets_dir: Path, port: int = 0) -> dict[str, str]:
    """Settings of a benchmark daemon: loopback, durable commits, no provider, quiet logs."""
    return {
        "STATICIPD_DATABASE": str(database),
        "STATICIPD_DATABASE__SYNCHRONOUS": "FULL",
        "STATICIPD_LISTEN": f"127.0.0.1:{port}",
        "STATICIPD_SECRETS_DIR": str(secrets_dir),
        "STATICIPD_LOGGING__LEVEL": "warning",
        "STATICIPD_LOGGING__FORMAT": "json",
    }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print `rows` under `headers`, first column left-aligned, the others right-aligned."""
    cells = [[str(h) for h in headers], *[[str(c) for c in row] for row in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        parts = [row[0].ljust(widths[0])]
        parts += [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)]
        return "  " + "  ".join(parts)

    print(line(cells[0]))
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))


def rss_mib() -> float:
    """This process's resident memory now, in MiB (Linux /proc; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{os.getpid()}/statm").read_text().split()
    except OSError:
        return 0.0
    return int(fields[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
