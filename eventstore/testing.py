"""A throwaway PostgreSQL server for tests and benchmarks only: never used by the daemon.

`ThrowawayPostgres.start()` runs the server binaries found on the machine (`initdb`, `pg_ctl`)
in a new temporary directory, listening on a Unix socket in that directory only (and, with
`tcp=True`, on a free port of 127.0.0.1: never another address).
As root (initdb refuses to run as root) the binaries run as the `postgres` user through
`runuser`. Every step is bounded in time, and a watcher process stops the server with
`pg_ctl stop -m immediate` when the process that started it ends without calling `stop()`.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

__all__ = ["ThrowawayPostgres", "find_server_binaries"]

_STEP_TIMEOUT = 60  # seconds for initdb, pg_ctl start or stop, or one psql-free admin step
SUPERUSER = "postgres"

# Peer-free authentication on the socket: the superuser is trusted (the tests' own admin
# connection), every other role needs its password, so a password file is really exercised.
_HBA = """\
local all postgres trust
local all all scram-sha-256
host all postgres 127.0.0.1/32 trust
host all all 127.0.0.1/32 scram-sha-256
"""


def find_server_binaries() -> Path | None:
    """The directory holding `initdb`, `pg_ctl` and `postgres` (newest version), or None."""
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2] or 0)
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.insert(0, str(Path(on_path).parent))
    for directory in reversed(candidates):
        if all(os.access(Path(directory) / b, os.X_OK) for b in ("initdb", "pg_ctl", "postgres")):
            return Path(directory)
    return None


@dataclass
class ThrowawayPostgres:
    """One temporary server: `url(db)` names a database on it, `create_database()` makes one."""

    bindir: Path
    root: Path  # the temporary directory: data/, the socket, the server's log
    durable: bool = False
    port: int = 5432  # the socket's name; with `tcp`, also a port on 127.0.0.1
    tcp: bool = False
    _watcher: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> str:
        return str(self.root)

    def url(self, database: str = "postgres", user: str = SUPERUSER, password: str = "") -> str:
        """A libpq URL that reaches `database` over the server's Unix socket."""
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        socket = quote(self.socket_dir, safe="")
        return f"postgresql://{auth}@/{database}?host={socket}&port={self.port}"

    def tcp_url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """A URL that reaches `database` on 127.0.0.1 (a server started with `tcp=True`)."""
        return f"postgresql://{quote(user, safe='')}@127.0.0.1:{self.port}/{database}"

    @classmethod
    def start(
        cls, bindir: Path | None = None, *, durable: bool = False, tcp: bool = False
    ) -> ThrowawayPostgres:
        """Start a new server; `durable` keeps fsync on (benchmarks), else off (tests: a killed
        server still keeps every commit, only a crash of the machine would lose some)."""
        found = bindir or find_server_binaries()
        if found is None:
            raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl) found")
        root = Path(tempfile.mkdtemp(prefix="staticipd-pg-"))
        server = cls(found, root, durable, _free_port() if tcp else 5432, tcp)
        try:
            server._chown(root)
            server._run(
                "initdb",
                "-D",
                str(server.data),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            )
            (server.data / "pg_hba.conf").write_text(_HBA)
            server.restart()
            server._watch()
        except BaseException:
            server.stop()
            raise
        return server

    def stop(self) -> None:
        """Stop the server (fast, then immediate) and remove its directory; idempotent."""
        if self.data.exists() and (self.data / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "fast", "-D", str(self.data))
            except (subprocess.SubprocessError, OSError):
                self.kill()
        if self._watcher is not None:
            self._watcher.kill()
            self._watcher.wait()
            self._watcher = None
        shutil.rmtree(self.root, ignore_errors=True)

    def kill(self) -> None:
        """Stop the server at once (`-m immediate`): what a crash or a lost server looks like."""
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._run("pg_ctl", "stop", "-w", "-t", "30", "-m", "immediate", "-D", str(self.data))

    def restart(self) -> None:
        """Start the server on its data directory and socket (first, or again after `kill`)."""
        self._run(
            "pg_ctl",
            "start",
            "-w",
            "-t",
            str(_STEP_TIMEOUT),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            self._options(),
        )

    def fresh_name(self) -> str:
        return "t_" + uuid.uuid4().hex[:16]

    def create_database(self, owner: str = SUPERUSER) -> str:
        """Create a new empty database owned by `owner`; return its name."""
        name = self.fresh_name()
        self._admin("createdb", "-O", owner, name)
        return name

    def drop_database(self, name: str) -> None:
        """Drop the database `name`, closing any connection still open to it."""
        self._admin("dropdb", "--force", "--if-exists", name)

    # -- internals ------------------------------------------------------------------------------

    def _admin(self, binary: str, *args: str) -> None:
        """Run createdb or dropdb against the server, as its superuser, over the socket."""
        where = ["-h", self.socket_dir, "-p", str(self.port), "-U", SUPERUSER]
        done = subprocess.run(  # noqa: S603 — fixed binary, our own arguments
            [str(self.bindir / binary), *where, *args],
            capture_output=True,
            timeout=_STEP_TIMEOUT,
            check=False,
        )
        if done.returncode != 0:
            raise subprocess.SubprocessError(done.stderr.decode(errors="replace"))

    def _options(self) -> str:
        fsync = "on" if self.durable else "off"
        listen = "127.0.0.1" if self.tcp else ""
        return (
            f"-c listen_addresses='{listen}' -c port={self.port}"
            f" -c unix_socket_directories='{self.root}'"
            f" -c max_connections=200 -c shared_buffers=32MB -c fsync={fsync}"
        )

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", SUPERUSER, "--"] if os.geteuid() == 0 else []

    def _chown(self, path: Path) -> None:
        if os.geteuid() == 0:
            shutil.chown(path, SUPERUSER, SUPERUSER)

    def _run(self, binary: str, *args: str) -> None:
        cmd = [*self._as_owner(), str(self.bindir / binary), *args]
        done = subprocess.run(  # noqa: S603 — fixed binaries, our own arguments
            cmd, capture_output=True, timeout=_STEP_TIMEOUT + 10, check=False
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise subprocess.SubprocessError(
                f"{binary} failed ({done.returncode}): {done.stderr.decode(errors='replace')}{tail}"
            )

    def _watch(self) -> None:
        """A detached shell that stops the server once this process is gone."""
        stop = " ".join(
            [*self._as_owner(), str(self.bindir / "pg_ctl"), "stop", "-m", "immediate", "-D"]
        )
        script = (
            f"while kill -0 {os.getpid()} 2>/dev/null; do sleep 1; done;"
            f" {stop} '{self.data}' >/dev/null 2>&1; rm -rf '{self.root}'"
        )
        self._watcher = subprocess.Popen(  # noqa: S603
            ["/bin/sh", "-c", script],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
