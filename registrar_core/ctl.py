"""``sipconsole ctl``: one-shot, scriptable commands against a running registrar (kamctl style)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from .api import NotFound, normalise_aor
from .config import default_control_path
from .control import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND, PARSE_ERROR, ControlClient, RpcError
from .options import Options, add_config, add_control

EXIT_OK, EXIT_NOT_FOUND, EXIT_USAGE, EXIT_NO_REGISTRAR = 0, 1, 2, 3
# The registrar refused the request itself: our usage was wrong.
_USAGE_CODES = frozenset((PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS))
# How long to wait for a registrar that accepted the connection but does not answer.
TIMEOUT = 15.0

_EPILOG = """commands:
  dump [--table T]                          every AOR and its contacts
  show AOR [--table T]                      one AOR's contacts with every attribute
  unregister AOR [--ruid RUID] [--table T]  remove an AOR, or one contact of it
  policy single-contact on|off|inherit [--aor AOR]
                                            newest REGISTER keeps the only binding
                                            (globally, or for one AOR; inherit drops
                                            the AOR's override)
  policy caller-check on|off                403 "Please register first" to unregistered callers
  policy show                               the policies in force
  stats                                     counters, like Kamailio's statistics
  qualify [AOR] [--ruid RUID] [--table T]   send OPTIONS now (every contact, an AOR's, or one);
                                            with AOR or --ruid waits and prints state and RTT

AOR is alice@example.com or sip:alice@example.com.
--json prints the result as JSON: dump gives {"table": T, "aors": [{"aor": A, "contacts":
[{every $ulc attribute, "expires": seconds left}]}]}, show gives {"aor": A, "count": N,
"contacts": [...]}, unregister gives {"removed": [...]}.
exit status: 0 ok, 1 not found (or the registrar failed the request), 2 bad usage,
3 no registrar answers on the control socket."""


def add_ctl_parser(sub: argparse._SubParsersAction, options: Options) -> None:
    ctl = sub.add_parser("ctl", help="query and change a running registrar (dump, show, unregister, policy, stats)",
                         description="One-shot commands against a running registrar, through its control socket.",
                         epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _shared_options(options.level(ctl, 1, "ctl"))
    cmds = ctl.add_subparsers(dest="ctl_command", metavar="COMMAND", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        """A ctl command; --control and --json work after it too (`ctl dump --json`)."""
        parser = cmds.add_parser(name, help=text, description=text)
        _shared_options(options.level(parser, 2, "ctl"))
        return parser

    dump = command("dump", "every AOR and its contacts")
    dump.add_argument("--table", default="location")
    show = command("show", "one AOR's contacts with every attribute")
    show.add_argument("aor", metavar="AOR")
    show.add_argument("--table", default="location")
    unreg = command("unregister", "remove an AOR, or one contact with --ruid")
    unreg.add_argument("aor", metavar="AOR")
    unreg.add_argument("--ruid", help="remove only this contact")
    unreg.add_argument("--table", default="location")
    policy = command("policy", "show or switch single-contact and caller-check")
    policy.add_argument("name", choices=["single-contact", "caller-check", "show"])
    policy.add_argument("value", nargs="?", choices=["on", "off", "inherit"])
    policy.add_argument("--aor", help="single-contact for this AOR only")
    policy.add_argument("--table", default="location")
    command("stats", "counters (registered_users, accepted_regs, ...)")
    qual = command("qualify", "send OPTIONS now and print reachability (state, RTT)")
    qual.add_argument("aor", metavar="AOR", nargs="?")
    qual.add_argument("--ruid", help="only this contact")
    qual.add_argument("--table", default="location")


def _shared_options(level: Any) -> None:
    add_control(level)
    add_config(level)
    level.add_argument("--json", action="store_true", help="print JSON instead of tables")


def _request(args: argparse.Namespace) -> tuple[str, dict[str, Any]]:
    cmd = args.ctl_command
    if cmd == "dump":
        return "dump", {"table": args.table}
    if cmd == "show":
        return "show", {"aor": args.aor, "table": args.table}
    if cmd == "unregister":
        params = {"aor": args.aor, "table": args.table}
        if args.ruid:
            params["ruid"] = args.ruid
        return "unregister", params
    if cmd == "stats":
        return "stats", {}
    if cmd == "qualify":
        params = {"table": args.table, "wait": bool(args.aor or args.ruid)}
        if args.aor:
            params["aor"] = args.aor
        if args.ruid:
            params["ruid"] = args.ruid
        return "qualify", params
    if args.name == "show":
        if args.value is not None or args.aor:
            raise ValueError("policy show takes no value and no --aor")
        return "policy.get", {"table": args.table}
    if args.value is None:
        raise ValueError(f"policy {args.name} needs on or off")
    if args.name == "caller-check" and (args.aor or args.value == "inherit"):
        raise ValueError("caller-check is global: on or off, without --aor")
    if args.value == "inherit" and not args.aor:
        raise ValueError("inherit needs --aor (the global policy is on or off)")
    value = None if args.value == "inherit" else args.value == "on"
    params = {"name": args.name.replace("-", "_"), "value": value, "table": args.table}
    if args.aor:
        params["aor"] = args.aor
    return "policy.set", params


def _check_aor(params: dict[str, Any]) -> None:
    """A malformed AOR is bad usage, caught before the registrar is asked."""
    if "aor" in params:
        try:
            normalise_aor(params["aor"])
        except NotFound:
            raise ValueError(f"not a valid AOR: {params['aor']!r} (expected user@domain or sip:user@domain)") from None


def _say(message: str) -> None:
    """One line on stderr, whatever the message holds."""
    print("sipconsole ctl: " + " ".join(str(message).split()), file=sys.stderr)


def run_ctl(args: argparse.Namespace) -> int:
    try:
        method, params = _request(args)
        _check_aor(params)
    except ValueError as exc:
        _say(f"error: {exc}")
        return EXIT_USAGE
    path = args.control or str(default_control_path())
    try:
        result = asyncio.run(_call(path, method, params))
    except ConnectionError as exc:
        _say(str(exc))
        return EXIT_NO_REGISTRAR
    except TimeoutError:
        _say(f"no answer from the registrar on {path} within {TIMEOUT:g} s")
        return EXIT_NO_REGISTRAR
    except RpcError as exc:
        _say(exc.message)
        return EXIT_USAGE if exc.code in _USAGE_CODES else EXIT_NOT_FOUND
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(render(method, result))
    return EXIT_OK


async def _call(path: str, method: str, params: dict[str, Any]) -> Any:
    async with asyncio.timeout(TIMEOUT):
        client = await ControlClient(path).connect()
        try:
            return await client.call(method, **params)
        finally:
            await client.close()


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    return "\n".join(lines)


def _contact_rows(aor: str, contacts: list[dict[str, Any]]) -> list[list[str]]:
    return [[aor, c["addr"], str(c["expires"]), "" if c["q"] is None else f"{c['q']:g}",
             c.get("state", "unknown"), _rtt(c.get("rtt_ms")), c["received"], c["user_agent"], c["ruid"]]
            for c in contacts]


def _rtt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


_CONTACT_HEADERS = ["AOR", "CONTACT", "EXPIRES", "Q", "STATE", "RTT(ms)", "RECEIVED", "USER-AGENT", "RUID"]


def render(method: str, result: Any) -> str:
    if method == "dump":
        rows = [row for a in result["aors"] for row in _contact_rows(a["aor"], a["contacts"])]
        summary = f"table {result['table']}: {len(result['aors'])} AORs, {len(rows)} contacts"
        return f"{table(_CONTACT_HEADERS, rows)}\n{summary}" if rows else summary
    if method == "show":
        blocks = [f"AOR: {result['aor']}  ({result['count']} contacts)"]
        for c in result["contacts"]:
            blocks.append("\n".join(f"  {k:>10}: {_text(v)}" for k, v in sorted(c.items())))
        return "\n\n".join(blocks)
    if method == "qualify":
        rows = [[ruid, s["state"], _rtt(s["rtt_ms"]), s["reason"]] for ruid, s in sorted(result["contacts"].items())]
        return table(["RUID", "STATE", "RTT(ms)", "REASON"], rows)
    if method == "unregister":
        removed = result["removed"]
        return "\n".join(f"removed {c['aor']} {c['addr']} (ruid {c['ruid']})" for c in removed)
    if method in ("policy.get", "policy.set"):
        lines = [f"single-contact: {'on' if result['single_contact'] else 'off'} (global)",
                 f"caller-check:   {'on' if result['caller_check'] else 'off'}"]
        for aor, on in sorted(result["single_contact_overrides"].items()):
            lines.append(f"single-contact: {'on' if on else 'off'} for {aor}")
        return "\n".join(lines)
    rows = [[k, _text(v)] for k, v in result.items() if k not in ("register_rate", "requests", "responses")]
    rows += [[f"requests.{k}", str(v)] for k, v in sorted(result["requests"].items())]
    rows += [[f"responses.{k}", str(v)] for k, v in sorted(result["responses"].items())]
    return table(["STATISTIC", "VALUE"], rows)


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:.3f}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_text(v)}" for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)
