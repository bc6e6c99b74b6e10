"""Build hook: compile the REGISTER hot path with mypyc; pure Python when that cannot be done.

The modules below carry every REGISTER (parse, registrar logic, location service, reply):
compiled, a REGISTER costs about half the CPU (bench/README.md). Everything else, and the
whole package when SIPCONSOLE_PURE_PYTHON=1 is set or no C compiler works, stays Python
and behaves the same. ``registrar_core.build()`` says which one is running.

Dataclasses in these modules that are made per request write their ``__init__`` out and say
``init=False`` (as h11 does for its events): mypyc compiles that one, while the ``__init__`` that
@dataclass generates runs as interpreted Python (a tenth of a REGISTER's CPU while it was left
to @dataclass). The fields are declared once, without defaults: the ``__init__`` holds them.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

# What every request passes through. Not here: the stream transports (asyncio protocol subclasses),
# the control socket, the console.
HOT_PATH = [
    "registrar_core/sip/errors.py",
    "registrar_core/sip/limits.py",
    "registrar_core/sip/uri.py",
    "registrar_core/sip/headers.py",
    "registrar_core/sip/message.py",
    "registrar_core/sip/framing.py",
    "registrar_core/transactions.py",
    "registrar_core/source.py",
    "registrar_core/stats.py",
    "registrar_core/security.py",
    "registrar_core/stateless.py",
    "registrar_core/udp.py",  # the UDP listener: every datagram in, every reply out
    "registrar_core/redirect.py",
    "registrar_core/auth/digest.py",
    "registrar_core/auth/nonce.py",
    "registrar_core/auth/authenticator.py",
    "registrar_core/location/contact.py",
    "registrar_core/location/service.py",
    "registrar_core/registrar.py",
    "registrar_core/pipeline.py",
    "registrar_core/api.py",
    "registrar_core/events.py",  # two events per REGISTER while a console is attached
]


def ext_modules() -> list:
    if os.environ.get("SIPCONSOLE_PURE_PYTHON") == "1":
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("sipconsole: mypyc is not available, installing pure Python", file=sys.stderr)
        return []
    extensions = mypycify(HOT_PATH, opt_level="3", debug_level="0")
    for extension in extensions:
        extension.optional = True  # no working compiler: the pure-Python modules serve
    return extensions


setup(ext_modules=ext_modules())
