"""``python -m sipconsole``: the ``sipconsole`` command."""

import sys

from .cli import main

sys.exit(main())
