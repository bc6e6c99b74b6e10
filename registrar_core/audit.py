"""The audit trail: every operator action (unregister, policy change, subscriber change,
qualify now) is one log line and one ``operator.action`` event, whoever asked.

The line names the actor (console, ctl or api) with the uid and pid the kernel gave for its
control connection (SO_PEERCRED: not what the client claims), what was done to what, and
how it ended, so that "who removed alice's phone at 03:12" has an answer in the log:

    AUDIT actor=ctl uid=1000 pid=4242 action=unregister target=alice@example.com result=ok removed=2

Nothing here runs per REGISTER.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from .events import OPERATOR_ACTION, EventBus

log = logging.getLogger("sipconsole.audit")  # a name to anchor on, as sipconsole.security

CONSOLE, CTL, API = "console", "ctl", "api"


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asked: the kind of client and the process behind it."""

    kind: str
    uid: int
    pid: int

    @classmethod
    def this_process(cls, kind: str = API) -> Actor:
        return cls(kind, os.getuid(), os.getpid())


@contextmanager
def audited(events: EventBus, actor: Actor | None, action: str, target: str,
            **details: Any) -> Iterator[dict[str, Any]]:
    """Record the action done in the block: ``result=ok`` with what the block added to the
    yielded dict, or ``result=failed`` with the reason when it raises (which goes on)."""
    outcome: dict[str, Any] = {}
    try:
        yield outcome
    except Exception as exc:
        record(events, actor, action, target, "failed", **details, reason=str(exc.args[0] if exc.args else exc))
        raise
    record(events, actor, action, target, "ok", **details, **outcome)


def record(events: EventBus, actor: Actor | None, action: str, target: str, result: str, **details: Any) -> None:
    """One AUDIT log line and one operator.action event (``actor`` None: a direct API call)."""
    who = actor or Actor.this_process()
    fields = {"actor": who.kind, "uid": who.uid, "pid": who.pid, "action": action, "target": target,
              "result": result, **{k: v for k, v in details.items() if v is not None}}
    log.info("AUDIT %s", " ".join(f"{key}={_value(value)}" for key, value in fields.items()))
    events.publish(OPERATOR_ACTION, **fields)


def _value(value: Any) -> str:
    """A field as one token: quoted (JSON) when it holds spaces, quotes, '=' or control
    characters, so a crafted AOR or reason cannot forge fields or lines."""
    text = "on" if value is True else "off" if value is False else str(value)
    if text and text.isprintable() and not any(c in text for c in ' "=\\'):
        return text
    return json.dumps(text)
