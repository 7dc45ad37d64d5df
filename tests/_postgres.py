"""A private PostgreSQL server for the test session, and a fresh schema of it per test.

`postgres_server` runs `initdb` in a temporary folder and `pg_ctl start` on a free
loopback port (its unix socket in that folder too), as the `postgres` user when the
tests run as root, and stops it at the end of the session. No test talks to a server
it did not start. Tests that need it are skipped, saying why, only when no server can
be had here (no PostgreSQL binaries, or root without a `postgres` user).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "roost"
PASSWORD = "test-secret"


class PostgresServer:
    """A running private server: its port, URLs of its `roost` database, and a restart."""

    def __init__(self, port: int, pg_ctl: list[str] | None = None) -> None:
        self.port = port
        self._pg_ctl = pg_ctl  # the pg_ctl command line, with -D, as the server's user
        self._schemas = itertools.count(1)

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is cut, the server is back when this
        returns (as after a crash-restart of the database, minus the recovery)."""
        assert self._pg_ctl is not None, "this server was not started by the fixture"
        done = subprocess.run([*self._pg_ctl, "restart", "-m", "fast", "-w", "-t", "30"],
                              capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}")

    def url(self, *, password: str = PASSWORD, database: str = "roost",
            schema: str | None = None) -> str:
        """A URL of the server (TCP, password login), in `schema` when given."""
        query = "" if schema is None else f"?search_path={schema}"
        return f"postgresql://{USER}:{password}@127.0.0.1:{self.port}/{database}{query}"

    def fresh_schema(self) -> str:
        """Create an empty schema and return its name (a schema per test: fast isolation)."""
        name = f"t{next(self._schemas)}"
        self.sql(f"CREATE SCHEMA {name}")
        return name

    def sql(self, statement: str, database: str = "roost") -> None:
        """Run one statement as the server's superuser (over TCP, with the password)."""
        env = {**os.environ, "PGPASSWORD": PASSWORD}
        subprocess.run([_binary("psql"), "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
                        "-p", str(self.port), "-U", USER, "-d", database, "-c", statement],
                       check=True, env=env, capture_output=True, timeout=30)


def _bindir() -> Path | None:
    """Where initdb and pg_ctl are: `pg_config --bindir`, Debian's folders, or PATH."""
    candidates: list[Path] = []
    if shutil.which("pg_config"):
        done = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True)
        if done.returncode == 0:
            candidates.append(Path(done.stdout.strip()))
    candidates += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)]
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    return next((c for c in candidates if (c / "initdb").exists() and (c / "pg_ctl").exists()),
                None)


def _binary(name: str) -> str:
    bindir = _bindir()
    found = bindir / name if bindir is not None else None
    return str(found) if found is not None and found.exists() else name


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server started for this session (initdb + pg_ctl), stopped at its end."""
    bindir = _bindir()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl via pg_config, "
                    "/usr/lib/postgresql/*/bin or PATH); `python3 scripts/dev.py test` "
                    "installs Debian's postgresql package")
    as_user: list[str] = []
    owner: pwd.struct_passwd | None = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("the tests run as root and there is no `postgres` user to run the "
                        "PostgreSQL server as (Debian's postgresql package creates it)")
        as_user = ["runuser", "-u", "postgres", "--"]
    folder = Path(tempfile.mkdtemp(prefix="roost-postgres-"))
    data = folder / "data"
    password_file = folder / "password"
    password_file.write_text(PASSWORD + "\n")
    if owner is not None:
        for path in (folder, password_file):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*command: str) -> None:
        done = subprocess.run([*as_user, *command], capture_output=True, text=True, timeout=60)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}): "
                               f"{done.stdout}{done.stderr}")

    try:
        run(str(bindir / "initdb"), "--no-sync", "-D", str(data), "-U", USER,
            f"--pwfile={password_file}", "--auth-local=trust", "--auth-host=scram-sha-256",
            "--encoding=UTF8", "--locale=C")
        options = (f"-c listen_addresses=127.0.0.1 -c port={port} "
                   f"-c unix_socket_directories={folder} -c fsync=off -c full_page_writes=off "
                   "-c max_connections=60 -c shared_buffers=16MB")
        run(str(bindir / "pg_ctl"), "start", "-w", "-t", "30", "-D", str(data),
            "-l", str(folder / "log"), "-o", options)
    except (RuntimeError, subprocess.TimeoutExpired) as error:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"the private PostgreSQL server did not start: {error}")
    server = PostgresServer(port, [*as_user, str(bindir / "pg_ctl"), "-D", str(data),
                                   "-l", str(folder / "log")])
    try:
        server.sql("CREATE DATABASE roost", database="postgres")
        yield server
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "stop", "-m", "immediate", "-D",
                        str(data)], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of an empty schema of the session's server, for this test alone."""
    return postgres_server.url(schema=postgres_server.fresh_schema())
