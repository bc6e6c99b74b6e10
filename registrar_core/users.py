"""``sipconsole user add|rm|list|passwd``: manage subscribers.

When a registrar answers on the control socket, or holds the database named with
``--db``, the change goes through it (so it takes effect at once); otherwise the database
is edited directly, under its lock (:mod:`.dblock`), so that no registrar starts on it
meanwhile. A database held by a registrar that does not answer is refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import getpass
import sys
from typing import Any

from . import exit_codes
from .auth import SubscriberError, Subscribers, split_user
from .config import ConfigError, build_config, load_toml
from .control import ControlClient, RpcError
from .dblock import REGISTRAR, USER_COMMAND, DatabaseHeld, DatabaseLock
from .location import Batch, StorageError, Store, store_for
from .options import Options, add_config, add_control, add_db


def add_user_parser(sub: argparse._SubParsersAction, options: Options) -> None:
    user = sub.add_parser("user", help="manage subscribers (add, rm, list, passwd)",
                          description="Subscribers who may register (digest authentication). The change goes "
                          "through the registrar that holds the database, or into the file when none does.")
    _shared_options(options.level(user, 1, "user"))
    cmds = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        """A user command; --db, --control and --config work after it too (`user add X --db F`)."""
        parser = cmds.add_parser(name, help=text, description=text)
        _shared_options(options.level(parser, 2, "user"))
        return parser

    for name, text in (("add", "add a subscriber"), ("passwd", "change a subscriber's password")):
        p = command(name, text)
        p.add_argument("user", metavar="USER@DOMAIN")
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    command("rm", "remove a subscriber").add_argument("user", metavar="USER@DOMAIN")
    command("list", "list subscribers")


def _shared_options(level: Any) -> None:
    add_db(level)
    add_control(level)
    add_config(level)


def _password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise SubscriberError("no terminal to ask for the password: pipe it with --password-stdin")
    else:
        password = getpass.getpass(f"Password for {args.user}: ")
        if password != getpass.getpass("Again: "):
            raise SubscriberError("the passwords differ")
    if not password:
        raise SubscriberError("the password must not be empty")
    return password


def run_user(args: argparse.Namespace) -> int:
    try:
        values: dict[str, Any] = load_toml(args.config) if args.config else {}
        for name in ("db", "control"):
            if getattr(args, name):
                values[name] = getattr(args, name)
        config = build_config(values)
        if args.user_command != "list":
            split_user(args.user)
        password = _password(args) if args.user_command in ("add", "passwd") else ""
    except (SubscriberError, ConfigError) as exc:
        print(f"sipconsole user: error: {exc}", file=sys.stderr)
        return exit_codes.USAGE
    except KeyboardInterrupt:
        return exit_codes.FAILED
    # A database named without a control socket goes to the registrar holding it (its lock
    # says which), not to whatever registrar answers on the default socket.
    control_first = "control" in values or "db" not in values
    try:
        result = asyncio.run(_run(args.user_command, getattr(args, "user", ""), password,
                                  config.control if control_first else None, config.db))
    except (LookupError, SubscriberError, RpcError, StorageError, DatabaseHeld, OSError) as exc:
        print(f"sipconsole user: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return exit_codes.FAILED
    except KeyboardInterrupt:
        return exit_codes.FAILED
    print(result)
    return exit_codes.OK


async def _run(command: str, user: str, password: str, control: str | None, db: str) -> str:
    """Through the registrar on ``control``, else through the one holding ``db``, else in ``db``."""
    if control is not None:
        with contextlib.suppress(ConnectionError):
            return await _through(await ControlClient(control).connect(), command, user, password)
    try:
        lock = DatabaseLock.take(db, role=USER_COMMAND)
    except DatabaseHeld as held:
        if held.holder.role != REGISTRAR:
            raise
        owner = held.holder.control
        try:
            client = await ControlClient(owner).connect() if owner else None
        except ConnectionError:
            client = None
        if client is None:
            raise ConnectionError(
                f"{db} is held by a registrar (PID {held.holder.pid or 'unknown'}) that does not answer on a "
                f"control socket{f' ({owner})' if owner else ''}: retry when it answers, or stop it first") from None
        return await _through(client, command, user, password)
    try:
        return await _offline(command, user, password, db)
    finally:
        if lock is not None:
            lock.release()


async def _through(client: ControlClient, command: str, user: str, password: str) -> str:
    """The change made by a running registrar: it takes effect at once."""
    try:
        if command == "list":
            return "\n".join((await client.call("user.list"))["users"])
        params = {"user": user, **({"password": password} if password else {})}
        done = await client.call(_RPC[command], **params)
        return f"{_DONE[command]} {done['user']}"
    finally:
        await client.close()


_RPC = {"add": "user.add", "passwd": "user.passwd", "rm": "user.remove"}
_DONE = {"add": "added", "passwd": "password changed for", "rm": "removed"}


class _DirectWriter:
    """The Keeper of Subscribers without a registrar: each change is its own write."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def commit(self, batch: Batch) -> None:
        await self.store.write(batch)


async def _offline(command: str, user: str, password: str, db: str) -> str:
    store = store_for(db)
    await store.open()
    try:
        subscribers = Subscribers(_DirectWriter(store))
        await subscribers.load()
        if command == "list":
            return "\n".join(subscribers.list())
        if command == "add":
            done = await subscribers.add(user, password)
        elif command == "passwd":
            done = await subscribers.add(user, password, replace=True)
        else:
            done = await subscribers.remove(user)
        return f"{_DONE[command]} {done}"
    finally:
        await store.close()
