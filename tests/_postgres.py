"""A throwaway PostgreSQL server for the tests (used by the fixtures in tests/conftest.py).

The server lives in a fresh directory under /tmp (short, because a unix socket path is limited
to ~100 characters), listens only on 127.0.0.1 with trust authentication, and is removed by
`PostgresServer.stop`. PostgreSQL refuses to run as root, so under root every server command
runs as the `postgres` system user, which then owns the directory.
"""

from __future__ import annotations

import contextlib
import getpass
import glob
import os
import pwd
import shlex
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

#: Where Debian/Ubuntu put the server binaries (not on PATH there).
DEBIAN_BIN_GLOB = "/usr/lib/postgresql/*/bin"
START_TIMEOUT_S = 60
START_ATTEMPTS = 3


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server could be found or started; the message says why."""


def require_postgres() -> bool:
    """Whether a missing server must fail the run (CI, or HPORL_REQUIRE_POSTGRES=1)."""
    return bool(os.environ.get("CI")) or os.environ.get("HPORL_REQUIRE_POSTGRES") == "1"


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it where a server is required (see `require_postgres`)."""
    if require_postgres():
        pytest.fail(f"PostgreSQL is required here (CI or HPORL_REQUIRE_POSTGRES=1): {reason}")
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def find_bin_dir() -> Path:
    """The directory holding `initdb` and `pg_ctl`: from PATH, else the newest Debian one."""
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        # Resolved, so that a symlink to the real binaries works and a pg_wrapper one is skipped.
        bindir = Path(os.path.realpath(initdb)).parent
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    candidates = [Path(d) for d in glob.glob(DEBIAN_BIN_GLOB)]
    candidates = [d for d in candidates if (d / "initdb").is_file() and (d / "pg_ctl").is_file()]
    if not candidates:
        raise PostgresUnavailable(
            f"initdb/pg_ctl not found on PATH nor in {DEBIAN_BIN_GLOB} "
            "(Debian: apt-get install postgresql)"
        )

    def version(d: Path) -> tuple[int, ...]:
        return tuple(int(p) for p in d.parent.name.split(".") if p.isdigit())

    return max(candidates, key=version)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _psycopg():
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresUnavailable(
            'psycopg is not installed (pip install -e ".[postgres]" or ".[test]")'
        ) from exc
    return psycopg


def admin_conninfo(url: str) -> str:
    """A psycopg connection string for the `postgres` database of the server in `url`."""
    from sqlalchemy.engine import make_url

    admin = make_url(url).set(drivername="postgresql", database="postgres")
    return admin.render_as_string(hide_password=False)


def with_database(url: str, dbname: str) -> str:
    """`url` with its database replaced by `dbname`."""
    from sqlalchemy.engine import make_url

    return make_url(url).set(database=dbname).render_as_string(hide_password=False)


def create_database(url: str, prefix: str = "hporl_test") -> str:
    """Create a uniquely named database on the server in `url` and return its URL."""
    psycopg = _psycopg()
    from psycopg import sql

    dbname = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_conninfo(url), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    return with_database(url, dbname)


def drop_database(url: str) -> None:
    """Drop the database of `url`, closing its connections; errors are ignored."""
    from sqlalchemy.engine import make_url

    psycopg = _psycopg()
    from psycopg import sql

    name = sql.Identifier(make_url(url).database)
    conninfo = admin_conninfo(url)
    with (
        contextlib.suppress(Exception),
        psycopg.connect(conninfo, autocommit=True, connect_timeout=10) as conn,
    ):
        try:  # WITH (FORCE) needs PostgreSQL 13.
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(name))
        except psycopg.Error:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))


@dataclass
class PostgresServer:
    """A running throwaway server; `stop` shuts it down and deletes its directory."""

    root: Path
    bindir: Path
    port: int
    user: str
    run_as: str | None  # the system user that runs the server commands, when we are root

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def logfile(self) -> Path:
        return self.root / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        """SQLAlchemy URL of `dbname` on this server."""
        return f"postgresql+psycopg://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def run(self, *args: str, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a server binary (as `run_as` when set); raises PostgresUnavailable on failure."""
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.run_as:
            if shutil.which("runuser"):
                cmd = ["runuser", "-u", self.run_as, "--", *cmd]
            else:
                cmd = ["su", self.run_as, "-s", "/bin/sh", "-c", shlex.join(cmd)]
        try:
            # cwd: the server user may not be allowed into ours.
            proc = subprocess.run(
                cmd, cwd=self.root, capture_output=True, text=True, timeout=timeout, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise PostgresUnavailable(f"{shlex.join(cmd)} failed: {exc}") from exc
        if proc.returncode != 0:
            raise PostgresUnavailable(
                f"{shlex.join(cmd)} exited with {proc.returncode}: "
                f"{(proc.stderr or proc.stdout).strip()[-2000:]}{self._log_tail()}"
            )
        return proc

    def _log_tail(self) -> str:
        try:
            tail = self.logfile.read_text(errors="replace").strip().splitlines()[-15:]
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(tail) if tail else ""

    def initdb(self) -> None:
        self.run(
            "initdb",
            "--pgdata",
            str(self.datadir),
            "--username",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        )

    def start(self) -> None:
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} "
            # A throwaway server: durability buys nothing and costs time.
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        )
        self.run(
            "pg_ctl",
            "start",
            "--wait",
            f"--timeout={START_TIMEOUT_S}",
            "--pgdata",
            str(self.datadir),
            "--log",
            str(self.logfile),
            "-o",
            options,
            timeout=START_TIMEOUT_S + 10,
        )

    def stop(self) -> None:
        """Stop the server (fast mode, else immediate) and delete its files."""
        for mode in ("fast", "immediate"):
            if not (self.datadir / "postmaster.pid").exists():
                break
            with contextlib.suppress(PostgresUnavailable):
                self.run("pg_ctl", "stop", "--wait", "-m", mode, "--pgdata", str(self.datadir))
        shutil.rmtree(self.root, ignore_errors=True)


def start_server(dbname: str = "hporl_test") -> tuple[PostgresServer, str]:
    """Start a throwaway server with an empty database `dbname`; return it and that db's URL.

    Raises:
        PostgresUnavailable: with the reason (binaries missing, root without a `postgres`
            user, initdb or start failing, psycopg missing).
    """
    _psycopg()
    bindir = find_bin_dir()
    run_as = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError as exc:
            raise PostgresUnavailable(
                "running as root, and PostgreSQL refuses root, but there is no `postgres` user"
            ) from exc
        run_as = user = "postgres"
    else:
        owner, user = None, getpass.getuser()

    errors: list[PostgresUnavailable] = []
    for _ in range(START_ATTEMPTS):  # retried: the free port may be taken before the server binds
        root = Path(
            tempfile.mkdtemp(prefix="hporl-pg-", dir="/tmp" if os.path.isdir("/tmp") else None)
        )
        if owner is not None:
            os.chown(root, owner.pw_uid, owner.pw_gid)
        server = PostgresServer(
            root=root, bindir=bindir, port=free_port(), user=user, run_as=run_as
        )
        try:
            server.initdb()
            server.start()
            url = create_database(server.url(), prefix=dbname)
        except Exception as exc:
            server.stop()
            if not isinstance(exc, PostgresUnavailable):
                exc = PostgresUnavailable(f"{type(exc).__name__}: {exc}")
            errors.append(exc)
            continue
        return server, url
    raise errors[-1]
