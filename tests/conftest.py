"""Shared fixtures: a registrar in this process, or `sipconsole serve` as a real process."""

from __future__ import annotations

import gc
import shutil
import ssl
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from registrar_core.config import build_config
from registrar_core.server import Server

from .postgres import PostgresCluster
from .processes import ServeProcess
from .sipclient import free_port


def pytest_sessionstart(session: pytest.Session) -> None:
    """Refuse to test a compiled hot path older than its source (setup.py builds it in place):
    an edit to a compiled module takes effect only after the next ``pip install -e .``."""
    root = Path(__file__).resolve().parent.parent / "registrar_core"
    # The code is in the shared library next to the package; a module's own .so is a shim that
    # an incremental build (setup.py build_ext --inplace) may leave as it was.
    shared = max((p.stat().st_mtime for p in root.parent.glob("*__mypyc*.so")), default=0.0)
    for compiled in root.rglob("*.so"):
        source = compiled.with_name(compiled.name.split(".", 1)[0] + ".py")
        if source.exists() and source.stat().st_mtime > max(shared, compiled.stat().st_mtime):
            pytest.exit(f"{source.relative_to(root.parent)} is newer than its compiled module: "
                        "rebuild with `python3 -m pip install -e .` (or delete the .so files)", returncode=4)


@pytest.fixture(autouse=True)
def _collector_settings_restored() -> Iterator[None]:
    """A console sets its process's collector for a process of its own (console/memory.py: the
    thresholds, and a callback that freezes what each middle pass leaves); many consoles run in
    this one, so each test ends with the settings it started with."""
    thresholds, callbacks = gc.get_threshold(), list(gc.callbacks)
    yield
    gc.set_threshold(*thresholds)
    gc.callbacks[:] = callbacks


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short temporary directory (Unix socket paths are limited to ~107 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="sc-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def make_server(short_dir: Path) -> AsyncIterator:
    """Factory: ``await make_server(**settings)`` starts a registrar in this event loop."""
    started: list[Server] = []

    async def start(**settings) -> Server:
        port = free_port()
        values = {
            "listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
            "db": str(short_dir / "location.db"),
            "control": str(short_dir / f"control-{len(started)}.sock"),
            # Lab settings unless a test asks otherwise: auth and flood limits have their own tests.
            "auth": False,
            "ip_budget": 0,
            "trusted": "",  # the default trusts loopback, where every test runs: bans could not show
        }
        values.update(settings)
        srv = Server(build_config(values))
        await srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        await srv.stop()


@pytest.fixture
async def server(make_server) -> Server:
    """A registrar on a free UDP+TCP port with its database in a temporary directory."""
    return await make_server()


class TlsFiles:
    """A test CA (trustme) and a certificate for localhost, 127.0.0.1 and ::1, as PEM files."""

    def __init__(self, directory: Path) -> None:
        import trustme

        self.ca = trustme.CA()
        issued = self.ca.issue_cert("localhost", "127.0.0.1", "::1")
        self.cert, self.key, self.ca_file = directory / "cert.pem", directory / "key.pem", directory / "ca.pem"
        issued.private_key_pem.write_to_path(str(self.key))
        issued.cert_chain_pems[0].write_to_path(str(self.cert))
        self.ca.cert_pem.write_to_path(str(self.ca_file))
        self.issued = issued

    def settings(self) -> dict[str, str]:
        """The registrar's --tls-cert/--tls-key."""
        return {"tls_cert": str(self.cert), "tls_key": str(self.key)}

    def client_context(self) -> ssl.SSLContext:
        """What a phone trusting the test CA uses."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


@pytest.fixture
def tls_files(short_dir: Path) -> TlsFiles:
    return TlsFiles(short_dir)


@pytest.fixture
def serve_process(short_dir: Path) -> Iterator[ServeProcess]:
    """`sipconsole serve` as a separate process (not started: call .start())."""
    proc = ServeProcess(short_dir, free_port())
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL server for the session (tests/postgres.py), started on first use."""
    cluster = PostgresCluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@pytest.fixture
def pg_dsn(postgres: PostgresCluster) -> str:
    """The DSN of a fresh, empty database of the session's PostgreSQL."""
    return postgres.new_database()
