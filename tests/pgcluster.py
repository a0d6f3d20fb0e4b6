"""A throwaway PostgreSQL server for the tests: Debian's server binaries (``apt-get install
postgresql``), a temporary directory, a free port on 127.0.0.1, password authentication over
TCP (so the password travels the way a deployment's does: ``DEALSYNC_STATE_PASSWORD``).

``postgres_cluster`` starts one per test session; ``pg_url`` gives each test a fresh database.
Where the server cannot start (no binaries, no psycopg, a sandbox without shared memory), those
fixtures skip their tests and say why.
"""

from __future__ import annotations

import glob
import importlib.util
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

PASSWORD = "dealsync-test-pw"
USER = "postgres"
SERVER_SETTINGS = {  # a test server: durability traded for speed
    "fsync": "off", "synchronous_commit": "off", "full_page_writes": "off",
    "max_connections": "200", "listen_addresses": "127.0.0.1"}


def find_bindir() -> Path | None:
    """The newest server installed the Debian way, else whatever initdb is on PATH."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                        key=lambda p: int(Path(p).parent.parent.name)
                        if Path(p).parent.parent.name.isdigit() else 0)
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    """One server in its own temporary directory; ``stop`` removes every trace."""

    def __init__(self, bindir: Path, settings: dict[str, str] | None = None):
        self.bindir = bindir
        self.settings = {**SERVER_SETTINGS, **(settings or {})}
        self.dir = Path(tempfile.mkdtemp(prefix="dealsync-pg-"))
        self.port = free_port()
        self._ids = itertools.count(1)
        # initdb refuses to run as root: as root, the server runs as Debian's postgres user.
        self.account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None

    def _run(self, *args: str) -> subprocess.CompletedProcess:
        def demote() -> None:
            if self.account is not None:
                os.setgid(self.account.pw_gid)
                os.setuid(self.account.pw_uid)
        return subprocess.run([str(self.bindir / args[0]), *args[1:]], capture_output=True,
                              text=True, preexec_fn=demote, cwd=self.dir, timeout=120)

    def start(self) -> None:
        (self.dir / "owner").write_text(str(os.getpid()))  # for reap_stale, after a hard kill
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD)
        if self.account is not None:
            for path in (self.dir, pwfile):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        init = self._run("initdb", "-D", str(self.dir / "data"), "-U", USER, "-E", "UTF8",
                         "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
                         f"--pwfile={pwfile}")
        if init.returncode:
            raise RuntimeError(f"initdb failed: {init.stderr.strip()[-500:]}")
        options = " ".join(f"-c {k}={v}" for k, v in self.settings.items())
        started = self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                            "-w", "-t", "60", "-o", f"-p {self.port} -k {self.dir} {options}",
                            "start")
        if started.returncode:
            log = (self.dir / "log").read_text(errors="replace") if (self.dir / "log").exists() \
                else started.stderr
            raise RuntimeError(f"pg_ctl start failed: {log.strip()[-500:]}")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, database: str = "postgres") -> str:
        """The URL as a configuration holds it: no password (that is a secret)."""
        return f"postgresql://{USER}@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = f"t{os.getpid()}_{next(self._ids)}"
        with psycopg.connect(self.url(), password=PASSWORD, autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        import psycopg

        with psycopg.connect(self.url(), password=PASSWORD, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def reap_stale(bindir: Path) -> None:
    """Stop and remove the servers of test sessions that were killed before their teardown
    (a SIGKILL, a closed pipe): a server does not end with the process that started it."""
    for folder in Path(tempfile.gettempdir()).glob("dealsync-pg-*"):
        try:
            owner = int((folder / "owner").read_text())
            os.kill(owner, 0)
            continue  # its session is still running
        except ProcessLookupError:
            pass
        except (OSError, ValueError):
            continue  # not ours to judge
        stale = Cluster.__new__(Cluster)
        stale.bindir, stale.dir = bindir, folder
        stale.account = pwd.getpwnam("postgres") if os.geteuid() == 0 else None
        stale.stop()


def start_cluster(settings: dict[str, str] | None = None) -> tuple[Cluster | None, str]:
    """A running cluster (``settings`` over the test defaults), or None and the reason there
    is none."""
    if importlib.util.find_spec("psycopg") is None:
        return None, "psycopg is not installed (pip install -e '.[test]')"
    bindir = find_bindir()
    if bindir is None:
        return None, "no PostgreSQL server binaries (Debian: apt-get install postgresql)"
    reap_stale(bindir)
    try:
        cluster = Cluster(bindir, settings)
    except KeyError:
        return None, "running as root, and there is no 'postgres' user to run the server as"
    try:
        cluster.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cluster.stop()
        return None, f"PostgreSQL from {bindir} did not start: {exc}"
    return cluster, ""


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[Cluster]:
    cluster, reason = start_cluster()
    if cluster is None:
        pytest.skip(reason)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def pg_url(postgres_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh, empty database's URL; its password is in DEALSYNC_STATE_PASSWORD, as a job's
    would be."""
    name = postgres_cluster.create_database()
    monkeypatch.setenv("DEALSYNC_STATE_PASSWORD", PASSWORD)
    yield postgres_cluster.url(name)
    postgres_cluster.drop_database(name)
