"""The control socket: JSON-RPC 2.0 over a Unix socket, one JSON object per line.

:class:`Methods` is the JSON face of :class:`~registrar_core.api.RegistrarCore`. The
control server, ``sipconsole ctl`` and the console (embedded through
:class:`LocalClient`, attached through :class:`ControlClient`) all go through it.

Methods: ``dump {table}``, ``show {aor, table}``, ``unregister {aor, ruid, table}``,
``policy.get {table}``, ``policy.set {name, value, aor, table}``, ``stats``,
``user.list``, ``user.add {user, password}``, ``user.passwd {user, password}``,
``user.remove {user}``, and ``subscribe {actor}`` (actor "console" or "ctl", the default:
the name the audit trail gives the connection), after which the server sends
``{"method": "event", "params": {...}}`` notifications on that connection.
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
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from .api import NotFound, RegistrarCore, normalise_aor
from .audit import CONSOLE, CTL, Actor
from .auth import SubscriberError
from .events import EVENTS_LOST, SUBSCRIBER_CHANGED
from .location import DEFAULT_TABLE, StorageError

log = logging.getLogger(__name__)

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
NOT_FOUND = -32004
STORAGE_FAILED = -32005
MAX_LINE = 1 << 20
_CLOSED: dict[str, Any] = {"kind": "connection.closed"}  # marks the end of a client's event stream


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


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
                       limit: int | None = None) -> dict[str, Any]:
        """Every AOR with its contacts; with ``limit``, one page of them and the next offset,
        so a large table is read in slices without stalling the registrar."""
        if not isinstance(offset, int) or offset < 0 or (limit is not None and (not isinstance(limit, int) or limit < 1)):
            raise RpcError(INVALID_PARAMS, "offset must be >= 0 and limit >= 1")
        now = self.core.location.clock()
        annotate = self.core.qualify.annotate
        profiles = self.core.dump(table, offset, limit)
        aors = [{"aor": p.aor, "contacts": [annotate(c.to_dict(now)) for c in p]} for p in profiles]
        result: dict[str, Any] = {"table": table, "aors": aors}
        if limit is not None:
            total = self.core.location.aor_count(table)
            result["total"] = total
            result["next"] = offset + limit if offset + limit < total else None
        return result

    async def rpc_show(self, aor: str, table: str = DEFAULT_TABLE) -> dict[str, Any]:
        profile = self.core.fetch_contacts(_valid_aor(aor), table=table)
        if not profile.count:
            raise NotFound(f"{profile.aor} has no contacts in table {table}")
        data = profile.to_dict(self.core.location.clock())
        for contact in data["contacts"]:
            self.core.qualify.annotate(contact)
        return data

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
        now = self.core.location.clock()
        return {"removed": [c.to_dict(now) for c in removed]}

    async def rpc_policy_get(self, table: str = DEFAULT_TABLE) -> dict[str, Any]:
        return {
            "single_contact": self.core.single_contact(table=table),
            "single_contact_overrides": self.core.single_contact_overrides(table),
            "caller_check": self.core.caller_check,
        }

    async def rpc_policy_set(self, name: str, value: bool | None, aor: str | None = None,
                             table: str = DEFAULT_TABLE) -> dict[str, Any]:
        if value is not None and not isinstance(value, bool):
            raise RpcError(INVALID_PARAMS, "policy value must be true, false or null")
        if aor is not None:
            aor = _valid_aor(aor)
        if name == "single_contact":
            if value is None and not aor:
                raise RpcError(INVALID_PARAMS, "the global single-contact policy needs on or off")
            await self.core.set_single_contact(value, aor, table=table, actor=self._who)
        elif name == "caller_check":
            if aor or value is None:
                raise RpcError(INVALID_PARAMS, "caller_check is global and needs on or off")
            await self.core.set_caller_check(value, actor=self._who)
        else:
            raise RpcError(INVALID_PARAMS, f"unknown policy {name!r}")
        return await self.rpc_policy_get(table)

    async def rpc_stats(self) -> dict[str, Any]:
        return self.core.snapshot_stats()

    # -- subscribers (``sipconsole user``) ------------------------------------------------
    async def rpc_user_list(self) -> dict[str, Any]:
        return {"users": self.core.subscribers.list()}

    async def rpc_user_add(self, user: str, password: str) -> dict[str, Any]:
        return self._user_changed("added", await self.core.add_subscriber(user, password, actor=self._who))

    async def rpc_user_passwd(self, user: str, password: str) -> dict[str, Any]:
        return self._user_changed("password", await self.core.add_subscriber(user, password, replace=True,
                                                                             actor=self._who))

    async def rpc_user_remove(self, user: str) -> dict[str, Any]:
        return self._user_changed("removed", await self.core.remove_subscriber(user, actor=self._who))

    def _user_changed(self, action: str, user: str) -> dict[str, Any]:
        """Tell every console that the subscriber list changed (and how)."""
        self.core.events.publish(SUBSCRIBER_CHANGED, user=user, action=action)
        return {"user": user}


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


class ControlServer:
    def __init__(self, core: RegistrarCore, path: str | Path) -> None:
        self.core = core
        self.methods = Methods(core)
        self.path = Path(path)
        self._server: asyncio.base_events.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self.path.exists() or self.path.is_symlink():
            if await _answers(self.path):
                raise OSError(f"another registrar already answers on {self.path}")
            self.path.unlink()
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
        try:
            while line := await reader.readline():
                reply, subscribe = await self._one(line)
                if reply is not None:
                    writer.write(_line(reply))
                    await writer.drain()
                if subscribe and pump is None:
                    pump = asyncio.create_task(self._pump(writer))
        except (ConnectionError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            if pump is not None:
                pump.cancel()
            self._writers.discard(writer)
            writer.close()

    async def _one(self, line: bytes) -> tuple[dict[str, Any] | None, bool]:
        try:
            request = json.loads(line)
        except ValueError:
            return _error(None, PARSE_ERROR, "invalid JSON"), False
        if not isinstance(request, dict) or request.get("jsonrpc") != "2.0" or not isinstance(
            request.get("method"), str
        ):
            return _error(request.get("id") if isinstance(request, dict) else None,
                          INVALID_REQUEST, "not a JSON-RPC 2.0 request"), False
        id_ = request.get("id")
        params = request.get("params") or {}
        if not isinstance(params, dict):
            return _error(id_, INVALID_PARAMS, "params must be an object"), False
        if request["method"] == "subscribe":
            _identify(params.get("actor"))
            return {"jsonrpc": "2.0", "id": id_, "result": {"subscribed": True}}, True
        try:
            result = await self.methods.call(request["method"], params)
        except RpcError as exc:
            return (_error(id_, exc.code, exc.message) if "id" in request else None), False
        except Exception as exc:  # a bug must not take the control socket down
            log.exception("control method %s failed", request["method"])
            return _error(id_, -32603, f"internal error: {exc}"), False
        return ({"jsonrpc": "2.0", "id": id_, "result": result} if "id" in request else None), False

    async def _pump(self, writer: asyncio.StreamWriter) -> None:
        sub = self.core.subscribe()
        try:
            while True:
                events = [await sub.get(), *sub.drain()]
                # One write for what queued meanwhile, not one (and a send) per event.
                writer.write(b"".join([_line({"jsonrpc": "2.0", "method": "event", "params": e.to_dict()})
                                       for e in events]))
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            sub.close()


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"))  # made once, not per message


def _line(message: dict[str, Any]) -> bytes:
    """One JSON-RPC message on the wire: compact JSON and a newline."""
    return (_ENCODER.encode(message) + "\n").encode()


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


class ControlClient:
    """An async JSON-RPC client of a running registrar's control socket."""

    def __init__(self, path: str | Path, actor: str = CTL) -> None:
        self.path = str(path)
        self.actor = actor  # what the audit trail calls this client: "ctl", or "console"
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._ids = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[Any]] = {}
        self._events: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=100_000)
        self._task: asyncio.Task[None] | None = None

    async def connect(self) -> ControlClient:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(self.path, limit=MAX_LINE * 64)
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
        try:
            while line := await self._reader.readline():
                message = json.loads(line)
                if not isinstance(message, dict):
                    continue
                if message.get("method") == "event":
                    self._queue_event(message["params"])
                    continue
                fut = self._waiting.pop(message.get("id"), None)  # type: ignore[arg-type]  # a reply without an id matches nothing
                if fut is not None and not fut.done():
                    fut.set_result(message)
        except (ConnectionError, ValueError, asyncio.CancelledError):
            pass
        finally:
            for fut in self._waiting.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("the registrar closed the control connection"))
            self._waiting.clear()
            self._queue_event(_CLOSED)

    def _queue_event(self, event: dict[str, Any]) -> None:
        """Queue one event; a reader that fell behind gets one events.lost instead of the backlog."""
        if self._events.full():
            while not self._events.empty():
                self._events.get_nowait()
            self._events.put_nowait({"kind": EVENTS_LOST})
        if not self._events.full():
            self._events.put_nowait(event)

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
        request = {"jsonrpc": "2.0", "id": id_, "method": method, "params": params}
        self._writer.write(json.dumps(request).encode() + b"\n")
        await self._writer.drain()
        reply = await fut
        if "error" in reply:
            raise RpcError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    async def events(self) -> AsyncIterator[list[dict[str, Any]]]:
        """Subscribe, then yield the events in batches as they arrive; raises
        ConnectionError when the registrar goes away."""
        await self.call("subscribe", actor=self.actor)
        while True:
            batch = [await self._events.get()]
            while not self._events.empty():
                batch.append(self._events.get_nowait())
            if _CLOSED in batch:
                if batch[0] is not _CLOSED:
                    yield batch[: batch.index(_CLOSED)]
                raise ConnectionError("the registrar closed the control connection")
            yield batch


class LocalClient:
    """The same interface as ControlClient, for a console embedded with its core."""

    def __init__(self, core: RegistrarCore, actor: str = CONSOLE) -> None:
        self.methods = Methods(core, Actor.this_process(actor))
        self.core = core

    async def connect(self) -> LocalClient:
        return self

    async def close(self) -> None:
        return None

    async def call(self, method: str, **params: Any) -> Any:
        # A JSON round trip keeps the embedded console honest: it sees what ctl sees.
        result = await self.methods.call(method, params)
        return json.loads(json.dumps(result, default=str))

    async def events(self) -> AsyncIterator[list[dict[str, Any]]]:
        sub = self.core.subscribe()
        try:
            while True:
                events = [await sub.get(), *sub.drain()]
                yield [e.to_dict() for e in events]
        finally:
            sub.close()
