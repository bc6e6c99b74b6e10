"""One binding of the location table, with the attributes of Kamailio's $ulc."""

from __future__ import annotations

import time
import zlib
from sys import intern
from collections.abc import Iterable
from dataclasses import FrozenInstanceError, dataclass, replace
from typing import Any, Final, cast

# Kamailio's save() flags. Final, as the module constants of the compiled modules that a
# REGISTER reads: mypyc folds a Final constant into the code or keeps it in a C variable, while
# any other module-level name is looked up in the module's dict at every use (about 130
# instructions; 20 such look-ups a REGISTER in the registrar and the location service).
SAVE_MEMORY_ONLY: Final = 0x01
SAVE_NO_REPLY: Final = 0x02
SAVE_SINGLE_CONTACT: Final = 0x04
SAVE_NO_EXPIRES_RANDOM: Final = 0x08
_intern: Final = intern


class _Interned:
    """One field's interning, remembering the last string interned: the fields that bindings
    share (socket, node, user agent, Allow, often the received address) are mostly those of the
    binding made before, and a comparison with it is a fraction of a call to ``sys.intern``
    (compiled, a generic call: about 240 instructions; five a Contact). The same interned copy
    either way: the memory figure is unchanged."""

    def __init__(self) -> None:
        self.last = ""

    def of(self, text: str) -> str:
        last = self.last  # read once: another thread may intern meanwhile
        if text == last:
            return last
        interned = self.last = _intern(text)
        return interned


_RECEIVED: Final = _Interned()
_SOCKET: Final = _Interned()
_USER_AGENT: Final = _Interned()
_METHODS: Final = _Interned()
_NODE: Final = _Interned()


@dataclass(frozen=True, slots=True, init=False)
class Contact:
    """A registered contact. ``expires`` is absolute (epoch seconds), as in $ulc.

    ``params`` holds the Contact header parameters other than expires and q,
    exactly as the device sent them (unknown ones included). ``__init__`` is written
    out to be compiled (setup.py), as h11 writes its events', and holds the defaults:
    the fields are declared once, here, without them. The fields that many bindings share
    (received: an edge proxy or a NAT; socket, user agent, methods, node) are interned: one
    copy each instead of one per binding (bench_memory: about 130 bytes per contact).
    """

    ruid: str
    aor: str
    addr: str
    expires: float
    callid: str
    cseq: int
    q: float | None
    params: str
    path: tuple[str, ...]
    received: str
    socket: str
    user_agent: str
    methods: str
    flags: int
    cflags: int
    instance: str
    regid: int
    conid: int | None
    modified: float  # time.time() when not given
    node: str  # the registrar that holds its flow (qualifies it), of those sharing a database

    def __init__(self, ruid: str, aor: str, addr: str, expires: float, callid: str, cseq: int,
                 q: float | None = None, params: str = "", path: tuple[str, ...] = (), received: str = "",
                 socket: str = "", user_agent: str = "", methods: str = "", flags: int = 0, cflags: int = 0,
                 instance: str = "", regid: int = 0, conid: int | None = None,
                 modified: float | None = None, node: str = "") -> None:
        # Plain assignments: compiled (mypyc), each stores into the object's slot (the twenty
        # 0.6 us, through object.__setattr__ 1.5), and the class stays frozen for everyone else.
        # Not compiled, the frozen __setattr__ refuses them: _python_init below stands in.
        self.ruid = ruid  # type: ignore[misc]
        self.aor = aor  # type: ignore[misc]
        self.addr = addr  # type: ignore[misc]
        self.expires = expires  # type: ignore[misc]
        self.callid = callid  # type: ignore[misc]
        self.cseq = cseq  # type: ignore[misc]
        self.q = q  # type: ignore[misc]
        self.params = params  # type: ignore[misc]
        self.path = path  # type: ignore[misc]
        self.received = _RECEIVED.of(received)  # type: ignore[misc]
        self.socket = _SOCKET.of(socket)  # type: ignore[misc]
        self.user_agent = _USER_AGENT.of(user_agent)  # type: ignore[misc]
        self.methods = _METHODS.of(methods)  # type: ignore[misc]
        self.flags = flags  # type: ignore[misc]
        self.cflags = cflags  # type: ignore[misc]
        self.instance = instance  # type: ignore[misc]
        self.regid = regid  # type: ignore[misc]
        self.conid = conid  # type: ignore[misc]
        self.modified = time.time() if modified is None else modified  # type: ignore[misc]
        self.node = _NODE.of(node)  # type: ignore[misc]

    @property
    def domain(self) -> str:
        return self.aor.rpartition("@")[2]

    @property
    def aorhash(self) -> int:
        return aor_hash(self.aor)

    def expires_in(self, now: float | None = None) -> int:
        """Whole seconds left (never negative)."""
        left = self.expires - (time.time() if now is None else now)
        return max(0, int(left + 0.5))

    def key(self) -> tuple[str, int] | str:
        """Identity used to match a REGISTER's contact with this binding (RFC 5626 §6)."""
        return (self.instance, self.regid) if self.instance else self.addr

    def updated(self, **changes: Any) -> Contact:
        return replace(self, **changes)

    def to_dict(self, now: float | None = None) -> dict[str, object]:
        """Every $ulc attribute; ``expires`` as seconds left, ``expires_at`` absolute."""
        return {
            "ruid": self.ruid, "aor": self.aor, "addr": self.addr, "expires": self.expires_in(now),
            "callid": self.callid, "cseq": self.cseq, "q": self.q, "params": self.params,
            "path": list(self.path), "received": self.received, "socket": self.socket,
            "user_agent": self.user_agent, "methods": self.methods, "flags": self.flags,
            "cflags": self.cflags, "instance": self.instance, "regid": self.regid, "conid": self.conid,
            "modified": self.modified, "expires_at": self.expires, "domain": self.domain,
            "aorhash": self.aorhash, "node": self.node,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> Contact:
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        fields["expires"] = data.get("expires_at", data["expires"])
        fields["path"] = tuple(cast("Iterable[str]", data.get("path") or ()))
        return cls(**fields)  # type: ignore[arg-type]


def aor_hash(aor: str) -> int:
    return zlib.crc32(aor.encode("utf-8", "surrogateescape"))


def _python_init(self: Contact, ruid: str, aor: str, addr: str, expires: float, callid: str, cseq: int,
                 q: float | None = None, params: str = "", path: tuple[str, ...] = (), received: str = "",
                 socket: str = "", user_agent: str = "", methods: str = "", flags: int = 0, cflags: int = 0,
                 instance: str = "", regid: int = 0, conid: int | None = None,
                 modified: float | None = None, node: str = "") -> None:
    """Contact.__init__ where it is not compiled: the frozen class's __setattr__ refuses plain
    assignments, so through object.__setattr__, as @dataclass's own __init__ does (a generic
    copy from a stand-in object took 3.3 us per Contact instead of 1.8)."""
    put = object.__setattr__
    put(self, "ruid", ruid)
    put(self, "aor", aor)
    put(self, "addr", addr)
    put(self, "expires", expires)
    put(self, "callid", callid)
    put(self, "cseq", cseq)
    put(self, "q", q)
    put(self, "params", params)
    put(self, "path", path)
    put(self, "received", _RECEIVED.of(received))
    put(self, "socket", _SOCKET.of(socket))
    put(self, "user_agent", _USER_AGENT.of(user_agent))
    put(self, "methods", _METHODS.of(methods))
    put(self, "flags", flags)
    put(self, "cflags", cflags)
    put(self, "instance", instance)
    put(self, "regid", regid)
    put(self, "conid", conid)
    put(self, "modified", time.time() if modified is None else modified)
    put(self, "node", _NODE.of(node))


try:
    Contact("", "", "", 0.0, "", 0)
except FrozenInstanceError:  # not compiled
    setattr(Contact, "__init__", _python_init)
