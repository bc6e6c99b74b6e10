"""sipconsole's registrar core: SIP message layer, transports, registrar and location service."""

__version__ = "0.1.0"  # pyproject.toml reads it from here


def build() -> str:
    """How the REGISTER hot path runs: "mypyc" (compiled at install, see setup.py) or "python"."""
    from .sip import message

    return "python" if (message.__file__ or "").endswith(".py") else "mypyc"
