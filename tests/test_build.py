"""The REGISTER hot path runs compiled (setup.py, mypyc), and the pure-Python fallback works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import registrar_core
from registrar_core import api, registrar
from registrar_core.location import service
from registrar_core.sip import message

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(os.environ.get("SIPCONSOLE_PURE_PYTHON") == "1", reason="pure-Python build asked for")
def test_the_hot_path_is_compiled():
    compiled = [m.__name__ for m in (message, registrar, service, api) if not (m.__file__ or "").endswith(".py")]
    assert compiled == ["registrar_core.sip.message", "registrar_core.registrar",
                        "registrar_core.location.service", "registrar_core.api"], (
        "no compiled build: `pip install -e .` needs a C compiler and the Python headers "
        "(SIPCONSOLE_PURE_PYTHON=1 runs the tests on pure Python)")
    assert registrar_core.build() == "mypyc"


def test_the_pure_python_fallback_registers_and_refuses_garbage(tmp_path):
    """What a machine without a C compiler runs: the same sources, uncompiled."""
    shutil.copytree(ROOT / "registrar_core", tmp_path / "registrar_core",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    script = textwrap.dedent("""
        import asyncio
        import registrar_core
        from registrar_core.api import RegistrarCore
        from registrar_core.config import build_config
        from registrar_core.source import Source

        REGISTER = (
            "REGISTER sip:example.com SIP/2.0\\r\\nVia: SIP/2.0/UDP 127.0.0.1:5062;branch=z9hG4bK-1\\r\\n"
            "From: <sip:alice@example.com>;tag=1\\r\\nTo: <sip:alice@example.com>\\r\\n"
            "Call-ID: c1\\r\\nCSeq: 1 REGISTER\\r\\nContact: <sip:alice@127.0.0.1:5062>\\r\\n"
            "Expires: 600\\r\\nContent-Length: 0\\r\\n\\r\\n").encode()

        async def main():
            core = RegistrarCore(build_config({"auth": False, "ip_budget": 0, "db": ":memory:"}), memory_only=True)
            await core.start()
            source = Source("udp", "127.0.0.1", 5062, "udp:127.0.0.1:5060")
            ok, _ = await core.handle(REGISTER, source)
            bad, _ = await core.handle(REGISTER.replace(b"CSeq: 1 REGISTER", b"CSeq: x"), source)
            profile = core.fetch_contacts("alice@example.com")
            print(registrar_core.build(), ok.split(b"\\r\\n")[0].decode(), bad.split(b"\\r\\n")[0].decode(),
                  profile.count, profile[0].addr)
            await core.stop()

        asyncio.run(main())
    """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["python", "SIP/2.0", "200", "OK", "SIP/2.0", "400", "Malformed",
                                   "CSeq", "1", "sip:alice@127.0.0.1:5062"]
