"""Validation of reg event bodies against RFC 3680's reginfo schema (tests/data/reginfo.xsd)
with Debian's xmllint (libxml2-utils, installed by scripts/test)."""

from __future__ import annotations

import subprocess
from pathlib import Path

REGINFO_XSD = Path(__file__).resolve().parent / "data" / "reginfo.xsd"


def reginfo_errors(document: bytes) -> str:
    """xmllint's complaints about ``document`` ("" when it validates against the schema)."""
    done = subprocess.run(["xmllint", "--nonet", "--noout", "--schema", str(REGINFO_XSD), "-"],
                          input=document, capture_output=True, timeout=30)
    return "" if done.returncode == 0 else done.stderr.decode(errors="replace")
