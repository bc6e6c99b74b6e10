"""The ``sipconsole`` command: console (default), ``serve``, ``attach`` and ``ctl``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from typing import Any, NoReturn

from .config import Config, ConfigError, build_config, default_control_path, load_toml

EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_NO_REGISTRAR = 3


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage dump."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _registrar_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("registrar")
    g.add_argument("--config", metavar="FILE", help="TOML file with the same keys as these options")
    g.add_argument("--listen", action="append", metavar="PROTO:HOST:PORT",
                   help="listen address, repeatable (default udp:127.0.0.1:5060 and tcp:127.0.0.1:5060)")
    g.add_argument("--db", metavar="PATH", help="SQLite location database (default ~/.local/share/sipconsole/location.db)")
    g.add_argument("--domain", action="append", metavar="D",
                   help="domain served, repeatable (none: accept any; others get 404)")
    g.add_argument("--min-expires", type=int, metavar="S", help="shortest registration (default 60; shorter gets 423)")
    g.add_argument("--max-expires", type=int, metavar="S", help="longest registration, longer is shortened (default 7200)")
    g.add_argument("--default-expires", type=int, metavar="S", help="when the REGISTER names none (default 3600)")
    g.add_argument("--max-contacts", type=int, metavar="N", help="contacts per AOR, 0 = no limit (default 0)")
    g.add_argument("--single-contact", action=argparse.BooleanOptionalAction, default=None,
                   help="newest REGISTER keeps the only binding of its AOR (default off)")
    g.add_argument("--caller-check", action=argparse.BooleanOptionalAction, default=None,
                   help='answer "403 Please register first" to unregistered callers (default off)')
    g.add_argument("--control", metavar="PATH", help=f"control socket (default {default_control_path()})")
    k = p.add_argument_group("reachability")
    k.add_argument("--qualify-interval", type=float, metavar="S",
                   help="send OPTIONS to every contact every S seconds, 0 = off (default 0)")
    k.add_argument("--qualify-timeout", type=float, metavar="S", help="seconds to wait for the answer (default 3)")
    k.add_argument("--qualify-remove-after", type=int, metavar="N",
                   help="remove a contact after N unanswered probes in a row, 0 = never (default 0)")
    k.add_argument("--dns-server", action="append", metavar="IP[:PORT]",
                   help="nameserver for RFC 3263 lookups of host-name contacts, repeatable (default: resolv.conf)")
    s = p.add_argument_group("security")
    s.add_argument("--auth", choices=["on", "off"], help="digest authentication of REGISTER (default on; off only in a lab)")
    s.add_argument("--auth-algorithms", metavar="LIST",
                   help="digest algorithms challenged, in order (default MD5, which every phone speaks; "
                        "also SHA-256, SHA-512-256)")
    s.add_argument("--ip-budget", type=int, metavar="N", help="requests per source IP per 2 s before a ban, 0 = no limit (default 400)")
    s.add_argument("--ban-time", type=int, metavar="S", help="seconds an IP or user stays banned (default 300)")
    s.add_argument("--auth-fail-budget", type=int, metavar="N", help="failed authentications per user per minute before a ban (default 5)")
    s.add_argument("--trusted", metavar="CIDR[,CIDR...]", help='peers exempt from --ip-budget and bans, not from '
                   'authentication, e.g. an edge proxy (default 127.0.0.0/8,::1; "" trusts none)')
    s.add_argument("--drop-scanners", action=argparse.BooleanOptionalAction, default=None,
                   help="silently drop known scanner User-Agents (default on)")
    s.add_argument("--max-tcp-per-ip", type=int, metavar="N", help="TCP connections per source IP (default 64)")
    s.add_argument("--max-tcp-connections", type=int, metavar="N",
                   help="TCP connections in all (default: the descriptor limit less a reserve)")
    s.add_argument("--tcp-idle-timeout", type=float, metavar="S", help="close idle TCP connections after S seconds (default 600)")
    s.add_argument("--tcp-read-timeout", type=float, metavar="S",
                   help="a TCP message must arrive whole within S seconds (default 20)")


def _config_from(args: argparse.Namespace) -> Config:
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    for name in ("listen", "db", "domain", "min_expires", "max_expires", "default_expires",
                 "max_contacts", "single_contact", "caller_check", "control", "auth", "auth_algorithms", "ip_budget",
                 "ban_time", "auth_fail_budget", "drop_scanners", "max_tcp_per_ip",
                 "qualify_interval", "qualify_timeout", "qualify_remove_after", "dns_server", "trusted"):
        value = getattr(args, name)
        if value is not None:
            values[name] = value
    return build_config(values)


def build_parser() -> Parser:
    parser = Parser(prog="sipconsole", description=(
        "SIP registrar with a live terminal console. With no command: run the registrar and "
        "its console in one process."))
    _registrar_options(parser)
    parser.add_argument("--read-only", action="store_true", help="console: disable every destructive action")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    serve = sub.add_parser("serve", help="run the registrar headless (logs to stderr)")
    _registrar_options(serve)

    attach = sub.add_parser("attach", help="open the console on a running `sipconsole serve`")
    attach.add_argument("--control", metavar="PATH", help=f"control socket (default {default_control_path()})")
    attach.add_argument("--read-only", action="store_true", help="disable every destructive action")

    from .ctl import add_ctl_parser
    from .users import add_user_parser

    add_ctl_parser(sub)
    add_user_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "ctl":
            from .ctl import run_ctl

            return run_ctl(args)
        if args.command == "user":
            from .users import run_user

            return run_user(args)
        if args.command == "attach":
            from console.app import run_attached

            return run_attached(args.control or str(default_control_path()), read_only=args.read_only)
        config = _config_from(args)
        if args.command == "serve":
            return serve(config)
        from console.app import run_embedded

        return run_embedded(config, read_only=args.read_only)
    except ConfigError as exc:
        print(f"sipconsole: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def serve(config: Config) -> int:
    from .server import Server, install_fast_loop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_fast_loop()

    async def run() -> int:
        server = Server(config)
        try:
            await server.start()
        except OSError as exc:
            print(f"sipconsole: error: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # storage refused to open, etc.
            print(f"sipconsole: error: {exc}", file=sys.stderr)
            return 1
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        logging.getLogger("sipconsole").info("registrar ready (%s)", ", ".join(server.core.listening))
        await stop.wait()
        logging.getLogger("sipconsole").info("shutting down")
        await server.stop()
        return 0

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
