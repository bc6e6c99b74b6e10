"""``sipconsole user add|rm|list|passwd``: manage subscribers.

When a registrar answers on the control socket the change goes through it (so it
takes effect at once); otherwise the database is edited directly.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from typing import Any

from .auth import SubscriberError, Subscribers, split_user
from .config import ConfigError, build_config, default_control_path, default_db_path, load_toml
from .control import NOT_FOUND, ControlClient, RpcError
from .location.store import Batch, LocationStore, StorageError

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_FAILED = 0, 1, 2, 3


def add_user_parser(sub: argparse._SubParsersAction) -> None:
    user = sub.add_parser("user", help="manage subscribers (add, rm, list, passwd)",
                          description="Subscribers who may register (digest authentication).")
    user.add_argument("--db", metavar="PATH", help=f"database when no registrar is running (default {default_db_path()})")
    user.add_argument("--config", metavar="FILE", help="TOML config to take db and control from")
    user.add_argument("--control", metavar="PATH", help=f"control socket (default {default_control_path()})")
    cmds = user.add_subparsers(dest="user_command", metavar="COMMAND", required=True)
    for name, text in (("add", "add a subscriber"), ("passwd", "change a subscriber's password")):
        p = cmds.add_parser(name, help=text)
        p.add_argument("user", metavar="USER@DOMAIN")
        p.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    rm = cmds.add_parser("rm", help="remove a subscriber")
    rm.add_argument("user", metavar="USER@DOMAIN")
    cmds.add_parser("list", help="list subscribers")


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
        result = asyncio.run(_run(args.user_command, getattr(args, "user", ""), password, config.control, config.db))
    except (SubscriberError, ConfigError) as exc:
        print(f"sipconsole user: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except LookupError as exc:
        print(f"sipconsole user: {exc.args[0]}", file=sys.stderr)
        return EXIT_NOT_FOUND
    except (RpcError, StorageError, OSError) as exc:
        print(f"sipconsole user: {getattr(exc, 'message', exc)}", file=sys.stderr)
        return EXIT_NOT_FOUND if getattr(exc, "code", None) == NOT_FOUND else EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    print(result)
    return EXIT_OK


async def _run(command: str, user: str, password: str, control: str, db: str) -> str:
    try:
        client = await ControlClient(control).connect()
    except ConnectionError:
        return await _offline(command, user, password, db)
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
    """What Subscribers needs of a LocationService, writing straight to the store."""

    def __init__(self, store: LocationStore) -> None:
        self.store = store

    async def commit(self, batch: Batch) -> None:
        await self.store.write(batch)


async def _offline(command: str, user: str, password: str, db: str) -> str:
    store = LocationStore(db)
    await store.open()
    try:
        subscribers = Subscribers(_DirectWriter(store))  # type: ignore[arg-type]
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
