"""``python -m console CONTROL [--read-only]``: the embedded console's own process (app.py).

Not a command for people: ``sipconsole`` starts it, attached to the registrar it runs.
"""

import asyncio
import sys

from registrar_core.server import install_fast_loop

from .app import console_session

if __name__ == "__main__":
    install_fast_loop()
    sys.exit(asyncio.run(console_session(sys.argv[1], read_only="--read-only" in sys.argv[2:])))
