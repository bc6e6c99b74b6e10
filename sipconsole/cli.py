"""The ``sipconsole`` command: console (default), ``serve``, ``attach``, ``ctl`` and ``user``.

It sits above both packages: ``registrar_core`` never imports ``console``; this module
chooses which one runs (the console embeds or attaches to the core).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from dataclasses import fields
from typing import Any, NoReturn

from registrar_core import __version__, build, exit_codes
from registrar_core.config import Config, ConfigError, build_config, default_control_path, load_toml
from registrar_core.options import OptionError, Options, add_config, add_control, add_db


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line, without the usage dump, and states
    the exit statuses at the end of every command's --help."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("epilog", exit_codes.HELP)
        super().__init__(*args, **kwargs)

    def parse_args(self, args: Any = None, namespace: Any = None) -> argparse.Namespace:  # type: ignore[override]
        """Parsed, with each shared option's value whatever level it was typed at (options.py)."""
        parsed = super().parse_args(args, namespace)
        options: Options | None = getattr(parsed, "options", None)
        if options is None:
            return parsed
        try:
            return options.merge(parsed, parsed.command or "")
        except OptionError as exc:
            self.error(str(exc))

    def error(self, message: str) -> NoReturn:
        self.exit(exit_codes.USAGE, f"{self.prog}: error: {message} (see --help)\n")


def _registrar_options(p: Any) -> None:
    g = p.add_argument_group("registrar")
    add_config(g)
    g.add_argument("--listen", action="append", metavar="PROTO:HOST:PORT",
                   help="listen address (udp, tcp, tls, ws, wss), repeatable (default udp:127.0.0.1:5060 and tcp:127.0.0.1:5060)")
    add_db(g)
    g.add_argument("--domain", action="append", metavar="D",
                   help="domain served, repeatable (none: accept any; others get 404)")
    g.add_argument("--min-expires", type=int, metavar="S", help="shortest registration (default 60; shorter gets 423)")
    g.add_argument("--min-expires-mode", choices=["reject", "clamp"],
                   help="a shorter registration gets 423 (reject, default) or is raised to the minimum (clamp)")
    g.add_argument("--max-expires", type=int, metavar="S", help="longest registration, longer is shortened (default 7200)")
    g.add_argument("--default-expires", type=int, metavar="S", help="when the REGISTER names none (default 3600)")
    g.add_argument("--expires-range", type=int, metavar="PERCENT",
                   help="randomise granted expires downwards by up to PERCENT (default 0; Kamailio's default_expires_range)")
    g.add_argument("--max-contacts", type=int, metavar="N", help="contacts per AOR, 0 = no limit (default 0)")
    g.add_argument("--max-contacts-status", type=int, choices=[403, 503],
                   help="the answer to a REGISTER over max-contacts (default 503, as Kamailio; Asterisk: 403)")
    g.add_argument("--max-contacts-mode", choices=["reject", "evict-oldest"],
                   help="over max-contacts: refuse the REGISTER (reject, default) or remove the bindings "
                        "closest to expiry (evict-oldest, as Asterisk's remove_existing)")
    g.add_argument("--single-contact", action=argparse.BooleanOptionalAction, default=None,
                   help="newest REGISTER keeps the only binding of its AOR (default off)")
    g.add_argument("--caller-check", action=argparse.BooleanOptionalAction, default=None,
                   help='answer "403 Please register first" to unregistered callers (default off)')
    add_control(g)
    g.add_argument("--metrics-listen", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (a port alone: 127.0.0.1; default off)")
    g.add_argument("--node-name", metavar="NAME",
                   help="this registrar's name among those on one database, shown per contact "
                        "(default: the hostname/the first --listen address)")
    g.add_argument("--journal-retention", metavar="DURATION",
                   help="keep the contact journal (ctl history) this long, e.g. 12h, 30d (default 7d)")
    g.add_argument("--journal-max-rows", type=int, metavar="N",
                   help="at most N journal rows, the oldest pruned first (default 1000000)")
    k = p.add_argument_group("reachability")
    k.add_argument("--qualify-interval", type=float, metavar="S",
                   help="send OPTIONS to every contact every S seconds, 0 = off (default 0)")
    k.add_argument("--qualify-timeout", type=float, metavar="S", help="seconds to wait for the answer (default 3)")
    k.add_argument("--qualify-remove-after", type=int, metavar="N",
                   help="remove a contact after N unanswered probes in a row, 0 = never (default 0)")
    k.add_argument("--qualify-flap-changes", type=int, metavar="N",
                   help="a contact is flapping after N reachable/unreachable changes (2-32, default 4) ...")
    k.add_argument("--qualify-flap-window", type=float, metavar="S",
                   help="... within S seconds (default 600)")
    k.add_argument("--dns-server", action="append", metavar="IP[:PORT]",
                   help="nameserver for RFC 3263 lookups of host-name contacts, repeatable (default: resolv.conf)")
    t = p.add_argument_group("TLS and WebSocket (listeners tls:, ws:, wss:)")
    t.add_argument("--tls-cert", metavar="FILE", help="PEM certificate (chain) of tls: and wss: listeners")
    t.add_argument("--tls-key", metavar="FILE", help="PEM private key of --tls-cert")
    t.add_argument("--tls-ca", metavar="FILE", help="PEM CA bundle: clients must present a certificate it signed (default: none asked)")
    t.add_argument("--tls-handshake-timeout", type=float, metavar="S",
                   help="a TLS or WebSocket handshake must finish within S seconds (default 10)")
    t.add_argument("--ws-path", metavar="PATH", help="WebSocket resource path, others get 404 (default /)")
    t.add_argument("--ws-origins", metavar="ORIGIN[,ORIGIN...]",
                   help="allowed Origin of WebSocket clients, e.g. https://phone.example.com (default: any)")
    t.add_argument("--keep-flow-contacts", action=argparse.BooleanOptionalAction, default=None,
                   help="keep a TLS/WS contact until it expires when its connection closes (default: remove it)")
    s = p.add_argument_group("security")
    s.add_argument("--auth", choices=["on", "off"], help="digest authentication of REGISTER (default on; off only in a lab)")
    s.add_argument("--auth-algorithms", metavar="LIST",
                   help="digest algorithms challenged, in order (default MD5, which every phone speaks; "
                        "also SHA-256, SHA-512-256)")
    s.add_argument("--auth-key", metavar="FILE", help="MAC key for nonces, made at first start (default auth.key beside the SQLite database; with PostgreSQL, in ~/.local/share/sipconsole: give every node the same file)")
    s.add_argument("--ip-budget", type=int, metavar="N", help="requests per source IP per 2 s before a ban, 0 = no limit (default 400)")
    s.add_argument("--ban-time", type=int, metavar="S", help="seconds an IP or user stays banned (default 300)")
    s.add_argument("--auth-fail-budget", type=int, metavar="N", help="failed authentications per user and source address per minute before that address is banned (default 5)")
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
    s.add_argument("--max-message-size", type=int, metavar="BYTES", help="longest SIP message accepted (default 65535)")
    s.add_argument("--max-headers", type=int, metavar="N", help="most header fields in one message (default 128)")


def _config_from(args: argparse.Namespace) -> Config:
    """The config file's values, each overridden by the option of the same name when given."""
    values: dict[str, Any] = load_toml(args.config) if args.config else {}
    for f in fields(Config):
        value = getattr(args, f.name, None)
        if value is not None:
            values[f.name] = value
    config = build_config(values)
    config.check_certificate()
    return config


def build_parser() -> Parser:
    options = Options()
    parser = Parser(prog="sipconsole", description=(
        "SIP registrar with a live terminal console. With no command: run the registrar and "
        "its console in one process. Every option may be typed before or after the command."))
    parser.add_argument("--version", action="version", version=f"sipconsole {__version__} (REGISTER hot path: "
                        f"{'compiled' if build() == 'mypyc' else 'pure Python'})")
    parser.set_defaults(options=options)
    top = options.level(parser, 0, "")
    _registrar_options(top)
    top.add_argument("--read-only", action="store_true", help="console: disable every destructive action")
    options.level(parser, 0, None).add_argument("--json", action="store_true", help="ctl: print JSON instead of tables")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    serve = sub.add_parser("serve", help="run the registrar headless (logs to stderr)",
                           description="Run the registrar headless; it logs to stderr.")
    _registrar_options(options.level(serve, 1, "serve"))

    attach = options.level(sub.add_parser("attach", help="open the console on a running `sipconsole serve`"), 1, "attach")
    add_control(attach)
    add_config(attach)
    attach.add_argument("--read-only", action="store_true", help="disable every destructive action")

    from registrar_core.ctl import add_ctl_parser
    from registrar_core.users import add_user_parser

    add_ctl_parser(sub, options)
    add_user_parser(sub, options)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command in ("ctl", "attach") and args.config and not args.control:
            args.control = build_config(load_toml(args.config)).control
        if args.command == "ctl":
            from registrar_core.ctl import run_ctl

            return run_ctl(args)
        if args.command == "user":
            from registrar_core.users import run_user

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
        return exit_codes.USAGE


def serve(config: Config) -> int:
    from registrar_core.server import Server, install_fast_loop

    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    install_fast_loop()

    async def run() -> int:
        server = Server(config)
        try:
            await server.start()
        except OSError as exc:
            print(f"sipconsole: error: {exc}", file=sys.stderr)
            return exit_codes.FAILED
        except Exception as exc:  # storage refused to open, etc.
            print(f"sipconsole: error: {exc}", file=sys.stderr)
            return exit_codes.FAILED
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        logging.getLogger("sipconsole").info("registrar ready (%s)", ", ".join(server.core.listening))
        await stop.wait()
        logging.getLogger("sipconsole").info("shutting down")
        await server.stop()
        return exit_codes.OK

    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
