"""The control socket: JSON-RPC 2.0 over a Unix socket, one JSON object per line.

:class:`Methods` is the JSON face of :class:`~registrar_core.api.RegistrarCore`. The
control server, ``sipconsole ctl`` and the console (a client of the control socket through
:class:`ControlClient`; in the core's own process, in tests, through :class:`LocalClient`)
all go through it.

Methods: ``dump {table}``, ``show {aor, table}``, ``history {aor, since, limit, table}``,
``unregister {aor, ruid, table}``,
``policy.get {table}``, ``policy.set {name, value, aor, table, trim}``,
``policy.preview {name, value, aor, table}`` (what a max_contacts or single_contact trim would
remove), ``stats``,
``user.list``, ``user.add {user, password}``, ``user.passwd {user, password}``,
``user.remove {user}``, ``subscriptions {aor}`` (reg event watchers), and ``subscribe {actor, compact}`` (actor "console" or "ctl", the
default: the name the audit trail gives the connection), after which the server sends
``{"method": "events", "params": {"events": [...]}}`` notifications on that connection: what
happened meanwhile, at most one notification every FRAME seconds (a busy registrar writes,
and its reader parses, one line per frame, not one per event). ``compact`` is what a console
asks for (events.CompactSubscription): added and refreshed contacts once per frame each, with only
the fields the AOR table shows, and at most TRAFFIC_PER_FRAME request.handled events per frame, the
newest; those two as JSON arrays (``["contact.added", table, aor, ruid, expires_at, modified,
user_agent]``, ``["request.handled", time, method, aor, source, status, reason, user_agent]``),
which ControlClient turns back into the dicts a full subscriber gets (events.expanded).

A reply that grows with the table (``dump`` without ``limit``) is never built whole: the
server encodes and writes it in chunks of AORs, waiting for the reader and letting SIP
traffic run between chunks. By default it is still one line (one JSON-RPC response);
with ``"stream": true`` among the params it comes as ``{"id": N, "partial": {"aors": [...]}}``
lines and then the response ``{"id": N, "result": {"table": T, "count": AORS}}``, which
lets a client print as it reads (``ControlClient.call_streamed``, ``sipconsole ctl dump``).
``user.list`` is written the same way. Other replies that grow with the table are one line,
built whole, with these bounds (ControlClient reads lines up to READ_LIMIT, 64 MiB): ``qualify``
without AOR or ruid, about 100 bytes per contact (some 600k contacts); ``policy.get``,
about 40 bytes per per-AOR single-contact override; ``stats``, about 20 bytes per banned IP.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import inspect
import itertools
import json
import logging
import os
import socket
import struct
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson

from .api import NotFound, RegistrarCore, normalise_aor
from .audit import CONSOLE, CTL, Actor
from .auth import SubscriberError
from .events import EVENTS_LOST, expanded
from .journal import HISTORY_LIMIT
from .location import DEFAULT_TABLE, Contact, StorageError

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
NOT_FOUND = -32004
STORAGE_FAILED = -32005
MAX_LINE = 1 << 20  # the longest request line
READ_LIMIT = MAX_LINE * 64  # the longest reply line ControlClient reads (a one-line dump of ~100k AORs)
#: AORs per chunk of a streamed reply (a few ms of the registrar's time to encode each).
CHUNK = 256
#: A reader that takes nothing of a reply for this long is dropped (and the drop logged).
WRITE_TIMEOUT = 60.0
_CLOSED: dict[str, Any] = {"kind": "connection.closed"}  # marks the end of a client's event stream
#: Seconds between two event notifications to one subscriber. A console redraws 4 times a
#: second: 10 frames keep it current, and each frame costs the registrar its TRAFFIC_PER_FRAME
#: request records and a write whatever the load (20 frames a second cost an attached console's
#: registrar 0.49k more instructions per REGISTER at 25,000 REG/s).
FRAME = 0.1
#: Events a ControlClient holds for a reader that does not take them, before it drops them for one events.lost.
MAX_QUEUED_EVENTS = 100_000


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class Streamed:
    """A reply that grows with the table: ``head`` plus the list ``key``, whose items come
    from ``chunks`` a slice at a time, so that no side ever holds the whole reply.

    ``messages`` (the request's ``"stream": true``) sends each chunk as its own ``partial``
    line and ends with ``head`` and a ``count``; otherwise it is written as one response line.
    """

    head: dict[str, Any]
    key: str
    chunks: AsyncGenerator[list[Any], None]
    messages: bool = False

    async def collect(self) -> dict[str, Any]:
        """The whole reply as one value (the embedded console's LocalClient, small tables)."""
        items = [item async for chunk in self.chunks for item in chunk]
        return {**self.head, self.key: items}


def contact_order(contact: Contact) -> tuple[str, str]:
    """A stable order of an AOR's contacts in a dump: by address, then ruid."""
    return contact.addr, contact.ruid


class Methods:
    """Every control method, as JSON-compatible values in and out. Changes are audited in the
    name of ``actor``, or of the control connection's peer (:data:`_PEER`) when there is one."""

    def __init__(self, core: RegistrarCore, actor: Actor | None = None) -> None:
        self.core = core
        self.actor = actor

    @property
    def _who(self) -> Actor | None:
        return _PEER.get() or self.actor

    async def call(self, method: str, params: dict[str, Any]) -> Any:
        handler = getattr(self, "rpc_" + method.replace(".", "_"), None)
        if handler is None or method == "subscribe":
            raise RpcError(METHOD_NOT_FOUND, f"unknown method {method!r}")
        try:
            # Check the parameters against the signature first: a TypeError raised *inside*
            # a method is a bug to report as such, not "bad parameters".
            inspect.signature(handler).bind(**params)
        except TypeError as exc:
            raise RpcError(INVALID_PARAMS, f"bad parameters for {method}: {exc}") from None
        _check_types(method, params)
        try:
            return await handler(**params)
        except LookupError as exc:
            if type(exc) not in (NotFound, LookupError):  # a KeyError/IndexError is a bug
                raise
            # NotFound, or the plain LookupError of an unknown subscriber
            raise RpcError(NOT_FOUND, str(exc.args[0] if exc.args else exc)) from None
        except SubscriberError as exc:
            raise RpcError(INVALID_PARAMS, str(exc)) from None
        except StorageError as exc:
            raise RpcError(STORAGE_FAILED, f"storage failure: {exc}") from None

    async def rpc_dump(self, table: str = DEFAULT_TABLE, offset: int = 0,
                       limit: int | None = None) -> dict[str, Any] | Streamed:
        """Every AOR with its contacts, sorted by AOR, streamed in chunks; with ``limit``, one
        page of them in table order and the next offset (the console's paged load)."""
        if not isinstance(offset, int) or offset < 0 or (limit is not None and (not isinstance(limit, int) or limit < 1)):
            raise RpcError(INVALID_PARAMS, "offset must be >= 0 and limit >= 1")
        if limit is None and not offset:
            return Streamed({"table": table}, "aors", self._sorted_aors(table))
        now = self.core.now()
        annotate = self.core.reachability
        profiles = self.core.dump(table, offset, limit)
        aors = [{"aor": p.aor, "contacts": [annotate(c.to_dict(now)) for c in p]} for p in profiles]
        result: dict[str, Any] = {"table": table, "aors": aors}
        if limit is not None:
            total = self.core.aor_count(table)
            result["total"] = total
            result["next"] = offset + limit if offset + limit < total else None
        return result

    async def _sorted_aors(self, table: str) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The table's AORs in order, CHUNK at a time. The AORs are those of the start (sorted
        in a thread: 250k take a quarter of a second); each chunk shows their contacts as
        they are when it is made, and an AOR emptied meanwhile is left out."""
        core = self.core
        annotate = core.reachability
        aors = await asyncio.to_thread(sorted, core.aors(table))
        for start in range(0, len(aors), CHUNK):
            now = core.now()
            entries = []
            for aor in aors[start:start + CHUNK]:
                contacts = core.contacts_of(aor, table=table, now=now)
                if contacts:
                    contacts.sort(key=contact_order)
                    entries.append({"aor": aor, "contacts": [annotate(c.to_dict(now)) for c in contacts]})
            yield entries

    async def rpc_show(self, aor: str, table: str = DEFAULT_TABLE) -> dict[str, Any]:
        profile = self.core.fetch_contacts(_valid_aor(aor), table=table)
        if not profile.count:
            raise NotFound(f"{profile.aor} has no contacts in table {table}")
        data = profile.to_dict(self.core.now())
        for contact in data["contacts"]:
            self.core.reachability(contact, history=True)
        return data

    async def rpc_history(self, aor: str, since: float = 0.0, limit: int = HISTORY_LIMIT,
                          table: str = DEFAULT_TABLE) -> dict[str, Any]:
        """The contact journal of an AOR (``since``: epoch seconds), oldest first: at most the
        newest ``limit`` rows."""
        if not isinstance(since, (int, float)) or isinstance(since, bool):
            raise RpcError(INVALID_PARAMS, "since must be a number (epoch seconds)")
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= HISTORY_LIMIT:
            raise RpcError(INVALID_PARAMS, f"limit must be between 1 and {HISTORY_LIMIT}")
        key = _valid_aor(aor)
        entries = await self.core.history(key, since=float(since), limit=limit, table=table)
        return {"aor": key, "table": table, "entries": [e.to_dict() for e in entries]}

    async def rpc_qualify(self, aor: str | None = None, ruid: str | None = None, wait: bool = True,
                          table: str = DEFAULT_TABLE) -> dict[str, Any]:
        """Send OPTIONS now to one contact (ruid), an AOR's contacts, or all; their states."""
        key = _valid_aor(aor) if aor else None
        return {"contacts": await self.core.qualify_now(ruid, aor=key, table=table, wait=bool(wait), actor=self._who)}

    async def rpc_unregister(self, aor: str, ruid: str | None = None, ruids: list[str] | None = None,
                             table: str = DEFAULT_TABLE) -> dict[str, Any]:
        if ruids is not None and (not isinstance(ruids, list) or not all(isinstance(r, str) for r in ruids)):
            raise RpcError(INVALID_PARAMS, "ruids must be a list of strings")
        removed = await self.core.unregister(_valid_aor(aor), ruid, ruids=ruids, table=table, actor=self._who)
        now = self.core.now()
        return {"removed": [c.to_dict(now) for c in removed]}

    async def rpc_policy_get(self, table: str = DEFAULT_TABLE) -> dict[str, Any]:
        return {
            "single_contact": self.core.single_contact(table=table),
            "single_contact_overrides": self.core.single_contact_overrides(table),
            "max_contacts": self.core.max_contacts(table=table),
            "max_contacts_overrides": self.core.max_contacts_overrides(table),
            "caller_check": self.core.caller_check,
        }

    async def rpc_policy_set(self, name: str, value: bool | int | None, aor: str | None = None,
                             table: str = DEFAULT_TABLE, trim: bool = False) -> dict[str, Any]:
        """Set a policy; for max_contacts and single_contact ``trim`` removes now what it leaves
        over (``removed``), otherwise ``over`` counts the AORs and contacts it leaves over."""
        if aor is not None:
            aor = _valid_aor(aor)
        if name == "max_contacts":
            removed = await self.core.set_max_contacts(_limit(value), aor, table=table, trim=bool(trim),
                                                       actor=self._who)
        elif not (value is None or isinstance(value, bool)):
            raise RpcError(INVALID_PARAMS, "policy value must be true, false or null")
        elif name == "single_contact":
            if value is None and not aor:
                raise RpcError(INVALID_PARAMS, "the global single-contact policy needs on or off")
            removed = await self.core.set_single_contact(value, aor, table=table, trim=bool(trim), actor=self._who)
        elif name == "caller_check":
            if aor or value is None or trim:
                raise RpcError(INVALID_PARAMS, "caller_check is global and needs on or off (nothing to trim)")
            await self.core.set_caller_check(value, actor=self._who)
            return await self.rpc_policy_get(table)
        else:
            raise RpcError(INVALID_PARAMS, f"unknown policy {name!r}")
        result = await self.rpc_policy_get(table)
        now = self.core.now()
        if trim:
            result["removed"] = [c.to_dict(now) for c in removed]
        else:
            over = await self.core.policy_preview(name, _stored(value), aor, table=table)
            result["over"] = {"aors": len(over), "contacts": sum(len(c) for c in over.values())}
        return result

    async def rpc_policy_preview(self, name: str, value: bool | int | None, aor: str | None = None,
                                 table: str = DEFAULT_TABLE) -> dict[str, Any]:
        """What ``policy.set`` with ``trim`` would remove ({"aors": [{"aor", "contacts"}]},
        oldest first), changing nothing: ``ctl policy ... --dry-run``, the console's question."""
        if aor is not None:
            aor = _valid_aor(aor)
        if name == "max_contacts":
            value = _limit(value)
        elif name != "single_contact" or not (value is None or isinstance(value, bool)):
            raise RpcError(INVALID_PARAMS, "a preview is of max_contacts (a number) or single_contact (true/false)")
        over = await self.core.policy_preview(name, _stored(value), aor, table=table)
        now = self.core.now()
        return {"name": name, "value": value, "aor": aor, "table": table,
                "count": sum(len(c) for c in over.values()),
                "aors": [{"aor": a, "contacts": [c.to_dict(now) for c in contacts]} for a, contacts in over.items()]}

    async def rpc_stats(self) -> dict[str, Any]:
        return self.core.snapshot_stats()

    async def rpc_nodes(self) -> dict[str, Any]:
        return {"nodes": [node.to_dict() for node in await self.core.nodes()]}

    # -- subscribers (``sipconsole user``) ------------------------------------------------
    async def rpc_subscriptions(self, aor: str | None = None) -> dict[str, Any]:
        """The reg event subscriptions (RFC 3680) of ``aor``, or all: watcher, source, expires."""
        return {"subscriptions": self.core.reg_subscriptions(_valid_aor(aor) if aor else None)}

    async def rpc_user_list(self) -> Streamed:
        """Every subscriber (user@domain, sorted), written in chunks like dump's AORs."""
        return Streamed({}, "users", _slices(self.core.subscriber_list(), CHUNK * 16))

    async def rpc_user_add(self, user: str, password: str) -> dict[str, Any]:
        return {"user": await self.core.add_subscriber(user, password, actor=self._who)}

    async def rpc_user_passwd(self, user: str, password: str) -> dict[str, Any]:
        return {"user": await self.core.add_subscriber(user, password, replace=True, actor=self._who)}

    async def rpc_user_remove(self, user: str) -> dict[str, Any]:
        return {"user": await self.core.remove_subscriber(user, actor=self._who)}


def _limit(value: Any) -> int | None:
    """A max-contacts value: a whole number >= 0, or null (inherit)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise RpcError(INVALID_PARAMS, "max_contacts must be a whole number >= 0 (0: no limit) or null (inherit)")
    return value


def _stored(value: bool | int | None) -> str | None:
    """A policy value as the policies table keeps it ("on"/"off", "N")."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return None if value is None else str(value)


async def _slices(items: list[Any], size: int) -> AsyncGenerator[list[Any], None]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


# Parameters that must be strings (or null where the method allows it).
_STRING_PARAMS = {"aor", "ruid", "table", "name", "user", "password"}


def _check_types(method: str, params: dict[str, Any]) -> None:
    for key, value in params.items():
        if key in _STRING_PARAMS and value is not None and not isinstance(value, str):
            raise RpcError(INVALID_PARAMS, f"bad parameters for {method}: {key} must be a string")
    if params.get("table") is not None and not params["table"]:
        raise RpcError(INVALID_PARAMS, f"bad parameters for {method}: table must not be empty")


def _valid_aor(aor: str) -> str:
    """A malformed AOR is a bad request (usage), not "not found"."""
    try:
        return normalise_aor(aor)
    except NotFound as exc:
        raise RpcError(INVALID_PARAMS, str(exc)) from None


def _error(id_: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message}}


async def ensure_free(path: str | Path) -> None:
    """Refuse a control socket another registrar answers on (checked before any port is bound,
    and again when the socket is made)."""
    if await _answers(Path(path)):
        raise OSError(f"another registrar already answers on {path}")


class ControlServer:
    def __init__(self, core: RegistrarCore, path: str | Path) -> None:
        self.core = core
        self.methods = Methods(core)
        self.path = Path(path)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        await ensure_free(self.path)
        if self.path.exists() or self.path.is_symlink():
            self.path.unlink()  # nobody answers on it: a dead registrar's
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE)
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        self._stopping = True
        for writer in list(self._writers):
            writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 2)
        self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _PEER.set(_peer(writer))  # this connection's task, and the methods it awaits, act as its peer
        self._writers.add(writer)
        pump: asyncio.Task[None] | None = None
        why = "the client closed it"
        try:
            while line := await reader.readline():
                reply, subscribe = await self._one(line)
                if reply is not None:
                    why = "the client went away while its reply was written"
                    # Events may be written between the chunks of a subscribed connection's reply:
                    # there a one-line reply is written whole (``stream`` keeps it in chunks).
                    await _write_reply(writer, reply, whole=pump is not None)
                    why = "the client closed it"
                if subscribe is not None and pump is None:
                    pump = asyncio.create_task(self._pump(writer, compact=subscribe))
        except ConnectionError as exc:
            why = f"{why} ({type(exc).__name__})"
        except (asyncio.LimitOverrunError, ValueError):
            why = f"a request line over {MAX_LINE} bytes"
        except TimeoutError:
            why = f"the client read nothing of its reply for {WRITE_TIMEOUT:g} s"
        except Exception:  # a bug while streaming a reply: the reply cannot be finished
            log.exception("control reply failed")
            why = "its reply failed (see the error above)"
        finally:
            if self._stopping:
                why = "the registrar stops"
            log.log(logging.DEBUG if why == "the client closed it" else logging.INFO,
                    "control connection closed: %s", why)
            if pump is not None:
                pump.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _one(self, line: bytes) -> tuple[dict[str, Any] | None, bool | None]:
        """The reply to one request line, and (for ``subscribe``) whether the events go compact."""
        try:
            request = json.loads(line)
        except ValueError:
            return _error(None, PARSE_ERROR, "invalid JSON"), None
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
            request.get("method"), str
        ):
            return _error(request.get("id") if isinstance(request, dict) else None,
                          INVALID_REQUEST, "not a JSON-RPC 2.0 request"), None
        id_ = request.get("id")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            return _error(id_, INVALID_PARAMS, "params must be an object"), None
        if request["method"] == "subscribe":
            _identify(params.get("actor"))
            compact = params.get("compact", False)
            if not isinstance(compact, bool):
                return _error(id_, INVALID_PARAMS, "compact must be true or false"), None
            return {"jsonrpc": "2.0", "id": id_, "result": {"subscribed": True}}, compact
        messages = params.pop("stream", False)  # how to frame a Streamed reply: any method takes it
        if not isinstance(messages, bool):
            return _error(id_, INVALID_PARAMS, "stream must be true or false"), None
        try:
            result = await self.methods.call(request["method"], params)
            if isinstance(result, Streamed):
                result = replace(result, messages=messages)
        except RpcError as exc:
            return (_error(id_, exc.code, exc.message) if "id" in request else None), None
        except Exception as exc:  # a bug must not take the control socket down
            log.exception("control method %s failed", request["method"])
            return _error(id_, -32603, f"internal error: {exc}"), None
        return ({"jsonrpc": "2.0", "id": id_, "result": result} if "id" in request else None), None

    async def _pump(self, writer: asyncio.StreamWriter, compact: bool) -> None:
        sub = self.core.subscribe_compact() if compact else self.core.subscribe()
        try:
            while True:
                await sub.wait()
                # One line for what queued meanwhile, then a frame's pause: under load, one
                # write (and one parse at the other end) per frame, not one per event.
                writer.write(_events_line(sub.records()))
                await writer.drain()
                await asyncio.sleep(FRAME)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sub.close()


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))  # made once, not per message


def _parse(line: bytes) -> Any:
    """One line from the registrar: orjson takes half the json module's time over a frame of
    events; json still reads what orjson refuses (NaN, integers beyond 64 bits)."""
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:
        return json.loads(line)


def _events_line(events: list[dict[str, Any]]) -> bytes:
    """One ``events`` notification on the wire. orjson, not json: a frame of a busy registrar
    holds an event or two per REGISTER, and this is the registrar's cost of a console."""
    return orjson.dumps({"jsonrpc": "2.0", "method": "events", "params": {"events": events}},
                        default=str, option=orjson.OPT_APPEND_NEWLINE)


def _line(message: dict[str, Any]) -> bytes:
    """One JSON-RPC message on the wire: compact JSON and a newline."""
    return (_ENCODER.encode(message) + "\n").encode()


async def _write_reply(writer: asyncio.StreamWriter, reply: dict[str, Any], *, whole: bool = False) -> None:
    """Write one reply; a Streamed result a chunk at a time, each drained before the next
    is made (bounded memory whatever the table size, and the loop runs between chunks)."""
    result = reply.get("result")
    if isinstance(result, Streamed) and whole and not result.messages:
        reply, result = {**reply, "result": await result.collect()}, None
    if not isinstance(result, Streamed):
        writer.write(_line(reply))
        await _drain(writer)
        return
    id_ = reply["id"]
    count = 0
    if not result.messages:
        # The response with an empty list, split where the list opens: the items go between.
        text = _ENCODER.encode({**reply, "result": {**result.head, result.key: []}})
        writer.write(text[:-3].encode())  # ...,"aors":[   (the list is the last member)
    async with contextlib.aclosing(result.chunks) as chunks:
        async for items in chunks:
            if not items:
                continue
            if result.messages:
                writer.write(_line({"jsonrpc": "2.0", "id": id_, "partial": {result.key: items}}))
            else:
                text = _ENCODER.encode(items)[1:-1]
                writer.write(("," + text if count else text).encode())
            count += len(items)
            await _drain(writer)
            await asyncio.sleep(0)  # drain() returns at once when the reader keeps up
    if result.messages:
        writer.write(_line({"jsonrpc": "2.0", "id": id_, "result": {**result.head, "count": count}}))
    else:
        writer.write(b"]}}\n")
    await _drain(writer)


async def _drain(writer: asyncio.StreamWriter) -> None:
    """``drain()``, bounded: a client that stopped reading must not hold its reply forever."""
    await asyncio.wait_for(writer.drain(), WRITE_TIMEOUT)


# The peer of the control connection whose task is running (None outside one).
_PEER: contextvars.ContextVar[Actor | None] = contextvars.ContextVar("control_peer", default=None)
_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def _peer(writer: asyncio.StreamWriter) -> Actor:
    """The connecting process, as the kernel knows it (SO_PEERCRED); a ctl until it says otherwise."""
    sock = writer.get_extra_info("socket")
    try:
        pid, uid, _ = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
    except (OSError, AttributeError):
        pid, uid = -1, -1
    return Actor(CTL, uid, pid)


def _identify(kind: Any) -> None:
    """A client that subscribes says what it is (the console); the uid and pid stay the kernel's."""
    peer = _PEER.get()
    if peer is not None and kind in (CONSOLE, CTL):
        _PEER.set(dataclasses.replace(peer, kind=kind))


async def _answers(path: Path) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 1)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


class ReplyDropped(ConnectionError):
    """The connection ended before a reply was complete: the registrar is there, but went away
    (or sent what cannot be read) in the middle of answering; not "no registrar answers"."""


class ControlClient:
    """An async JSON-RPC client of a running registrar's control socket."""

    def __init__(self, path: str | Path, actor: str = CTL) -> None:
        self.path = str(path)
        self.actor = actor  # what the audit trail calls this client: "ctl", or "console"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        # Streamed calls: their partial lines and final reply, a few at a time (the reader
        # waits while the caller is busy with the previous ones: the registrar waits in turn).
        self._streams: dict[int, asyncio.Queue[dict[str, Any] | None]] = {}
        # Events received and not yet taken by events(): a frame is queued with one extend,
        # not one Queue put per event (a busy registrar sends thousands a second).
        self._events: deque[dict[str, Any]] = deque()
        self._events_waiter: asyncio.Future[None] | None = None
        self.max_queued = MAX_QUEUED_EVENTS
        self._task: asyncio.Task[None] | None = None
        self._lost = ""  # why the connection ended, once it has

    async def connect(self) -> ControlClient:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=READ_LIMIT)
        except OSError as exc:
            raise ConnectionError(f"no registrar answers on {self.path} ({exc.strerror or exc})") from None
        self._task = asyncio.create_task(self._read())
        return self

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._writer is not None:
            self._writer.close()

    async def _read(self) -> None:
        assert self._reader is not None
        why = "the registrar closed the control connection before its reply was complete"
        try:
            while (line := await self._reader.readline()).endswith(b"\n"):  # else cut off by the end
                message = _parse(line)
                if not isinstance(message, dict):
                    continue
                if message.get("method") == "events":
                    self._queue_events(message["params"]["events"])  # expanded (or not) by events()
                    continue
                stream = self._streams.get(message.get("id"))  # type: ignore[arg-type]  # a reply without an id matches nothing
                if stream is not None:
                    await stream.put(message)
                    continue
                fut = self._waiting.pop(message.get("id"), None)  # type: ignore[arg-type]
                if fut is not None and not fut.done():
                    fut.set_result(message)
        except ConnectionError as exc:
            why = f"the control connection broke before the registrar's reply was complete ({exc})"
        except json.JSONDecodeError as exc:
            why = f"a reply from the registrar that is not JSON ({exc})"
        except ValueError:  # readline's "chunk exceed the limit"
            why = (f"a reply line over {READ_LIMIT:,} bytes: the client stopped reading it "
                   "(ask for it in chunks: stream, or limit)")
        except asyncio.CancelledError:
            why = "the control connection was closed"
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ReplyDropped(why))
            self._waiting.clear()
            for stream in self._streams.values():
                while not stream.empty():  # an incomplete reply is no reply
                    stream.get_nowait()
                stream.put_nowait(None)
            self._lost = why
            if self._writer is not None:
                self._writer.close()  # nothing more is read: the registrar may stop writing
            self._queue_events([_CLOSED])

    def _queue_events(self, events: list[dict[str, Any]]) -> None:
        """Queue a frame's events; a reader that fell behind (more than ``max_queued``
        waiting) gets one events.lost and the newest events instead of the backlog."""
        queued, room = self._events, self.max_queued
        if len(queued) + len(events) > room and events != [_CLOSED]:
            queued.clear()
            queued.append({"kind": EVENTS_LOST})
            events = events[len(events) - (room - 1):] if len(events) >= room else events
        queued.extend(events)
        waiter, self._events_waiter = self._events_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def connected(self) -> bool:
        return self._writer is not None and self._task is not None and not self._task.done()

    async def call(self, method: str, **params: Any) -> Any:
        if self._writer is None:
            raise ConnectionError("not connected")
        if not self.connected:
            raise ConnectionError("the registrar closed the control connection")
        id_ = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting[id_] = fut
        await self._send(id_, method, params)
        return _result(await fut)

    async def call_streamed(self, method: str, each: Callable[[dict[str, Any]], None], **params: Any) -> Any:
        """``call`` with ``"stream": true``: ``each`` is given every partial reply (one chunk,
        such as ``{"aors": [...]}``) as it arrives, in order; returns the final result. Raises
        ReplyDropped when the connection ends before the final result came."""
        if self._writer is None:
            raise ConnectionError("not connected")
        if not self.connected:
            raise ConnectionError("the registrar closed the control connection")
        id_ = next(self._ids)
        stream: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue(maxsize=4)
        self._streams[id_] = stream
        try:
            await self._send(id_, method, {**params, "stream": True})
            while (message := await stream.get()) is not None:
                if "partial" not in message:
                    return _result(message)
                each(message["partial"])
            raise ReplyDropped(self._lost)
        finally:
            del self._streams[id_]
            while not stream.empty():  # unblock the reader if we leave early
                stream.get_nowait()

    async def _send(self, id_: int, method: str, params: dict[str, Any]) -> None:
        assert self._writer is not None
        request = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()

    async def events(self, compact: bool = False, *, expand: bool = True) -> AsyncIterator[list[Any]]:
        """Subscribe, then yield the events in batches as they arrive (``compact``: as
        events.CompactSubscription has them; ``expand=False`` leaves its arrays as they came, for a
        reader that takes them apart itself: events.expanded would make two dicts per REGISTER);
        raises ConnectionError when the registrar goes away."""
        await self.call("subscribe", actor=self.actor, **({"compact": True} if compact else {}))
        while True:
            while not self._events:
                self._events_waiter = asyncio.get_running_loop().create_future()
                await self._events_waiter
            batch = list(self._events)
            self._events.clear()
            if _CLOSED in batch:
                if batch[0] is not _CLOSED:
                    batch = batch[: batch.index(_CLOSED)]
                    yield [expanded(event) for event in batch] if expand else batch
                raise ConnectionError("the registrar closed the control connection")
            yield [expanded(event) for event in batch] if expand else batch


def _result(reply: dict[str, Any]) -> Any:
    if "error" in reply:
        raise RpcError(reply["error"]["code"], reply["error"]["message"])
    return reply["result"]


class LocalClient:
    """The same interface as ControlClient, for a console in the core's own process (tests,
    screenshots): no socket between them."""

    def __init__(self, core: RegistrarCore, actor: str = CONSOLE, *, backlog: int = 10_000) -> None:
        self.methods = Methods(core, Actor.this_process(actor))
        self.core = core
        self.backlog = backlog  # events that may wait for the reader before it gets events.lost

    async def connect(self) -> LocalClient:
        return self

    async def close(self) -> None:
        return None

    async def call(self, method: str, **params: Any) -> Any:
        # A JSON round trip keeps the embedded console honest: it sees what ctl sees.
        result = await self.methods.call(method, params)
        if isinstance(result, Streamed):
            result = await result.collect()
        return json.loads(json.dumps(result, default=str))

    async def events(self, compact: bool = False, *, expand: bool = True) -> AsyncIterator[list[Any]]:
        sub = self.core.subscribe_compact(self.backlog) if compact else self.core.subscribe(self.backlog)
        try:
            while True:
                await sub.wait()
                records = sub.records()
                yield [expanded(record) for record in records] if expand else records
        finally:
            sub.close()
