"""``sipconsole ctl``: one-shot, scriptable commands against a running registrar (kamctl style)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any, TextIO

from . import exit_codes
from .api import NotFound, normalise_aor
from .config import default_control_path
from .control import (
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    ControlClient,
    ReplyDropped,
    RpcError,
)
from .journal import describe, parse_duration
from .options import Options, add_config, add_control

# The registrar refused the request itself: our usage was wrong.
_USAGE_CODES = frozenset((PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS))
# How long to wait for a registrar that accepted the connection but does not answer (for a
# streamed dump: between two chunks, however long the whole takes).
TIMEOUT = 15.0

_EPILOG = """commands:
  dump [--table T] [--ndjson]               every AOR and its contacts, sorted by AOR
                                            (then contact address), printed as they arrive
  show AOR [--table T]                      one AOR's contacts with every attribute
  history AOR [--since T] [--table T]       why its contacts came and went (the contact
                                            journal), oldest first; T is ISO 8601 local
                                            time (2026-12-06T08:30) or a duration ago (1h)
  unregister AOR [--ruid RUID] [--table T]  remove an AOR, or one contact of it
  policy single-contact on|off|inherit [--aor AOR]
                                            newest REGISTER keeps the only binding
                                            (globally, or for one AOR; inherit drops
                                            the AOR's override)
  policy max-contacts N|inherit [--aor AOR] at most N bindings per AOR (0: no limit; globally
                                            or for one AOR); existing bindings stay
  ... [--dry-run | --trim]                  (max-contacts, single-contact on) list what the
                                            change leaves over (evicted oldest first, or all
                                            but the newest), or set it and remove those now
  policy caller-check on|off                403 "Please register first" to unregistered callers
  policy show                               the policies in force
  stats                                     counters, like Kamailio's statistics
  nodes                                     the registrars sharing the database (PostgreSQL):
                                            addresses, up or down, REGISTERs per second
  qualify [AOR] [--ruid RUID] [--table T]   send OPTIONS now (every contact, an AOR's, or one);
                                            with AOR or --ruid waits and prints state and RTT
  subscriptions [AOR]                       who watches registrations (SUBSCRIBE Event: reg):
                                            AOR, watcher, source, seconds left, NOTIFY version

AOR is alice@example.com or sip:alice@example.com.
--json prints the result as JSON: dump gives {"table": T, "aors": [{"aor": A, "contacts":
[{every $ulc attribute, "expires": seconds left}]}]} (one document, one AOR per line, at
any table size), show gives {"aor": A, "count": N, "contacts": [...]} (times as epoch
seconds; the plain form prints them as ISO 8601 UTC), unregister gives {"removed": [...]},
history gives {"aor": A, "entries": [{"ts", "event", "addr", "received", "detail", ...}]}.
dump --ndjson prints one {"aor": A, "contacts": [...]} per line instead (for pipelines).
The control socket is $XDG_RUNTIME_DIR/sipconsole/control.sock, or /tmp/sipconsole-UID/
without XDG_RUNTIME_DIR (sudo, cron): give the registrar's with --control PATH.
""" + textwrap.fill(exit_codes.HELP, 90)


def add_ctl_parser(sub: argparse._SubParsersAction, options: Options) -> None:
    ctl = sub.add_parser("ctl", help="query and change a running registrar (dump, show, unregister, policy, stats, ...)",
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
    dump.add_argument("--ndjson", action="store_true", help="one JSON object per AOR per line")
    show = command("show", "one AOR's contacts with every attribute")
    show.add_argument("aor", metavar="AOR")
    show.add_argument("--table", default="location")
    hist = command("history", "why an AOR's contacts came and went (the contact journal)")
    hist.add_argument("aor", metavar="AOR")
    hist.add_argument("--since", metavar="T", help="from T on: ISO 8601 local time or a duration ago (1h, 2d)")
    hist.add_argument("--table", default="location")
    unreg = command("unregister", "remove an AOR, or one contact with --ruid")
    unreg.add_argument("aor", metavar="AOR")
    unreg.add_argument("--ruid", help="remove only this contact")
    unreg.add_argument("--table", default="location")
    policy = command("policy", "show or switch single-contact, max-contacts and caller-check")
    policy.add_argument("name", choices=["single-contact", "max-contacts", "caller-check", "show"])
    policy.add_argument("value", nargs="?", help="on|off|inherit; for max-contacts a number or inherit")
    policy.add_argument("--aor", help="single-contact or max-contacts for this AOR only")
    policy.add_argument("--table", default="location")
    trim = policy.add_mutually_exclusive_group()
    trim.add_argument("--dry-run", action="store_true", help="list what the change would remove; change nothing")
    trim.add_argument("--trim", action="store_true", help="set it and remove now what it leaves over")
    command("stats", "counters (registered_users, accepted_regs, ...)")
    command("nodes", "the registrars sharing the location table: addresses, up or down, REG/s")
    qual = command("qualify", "send OPTIONS now and print reachability (state, RTT)")
    qual.add_argument("aor", metavar="AOR", nargs="?")
    qual.add_argument("--ruid", help="only this contact")
    qual.add_argument("--table", default="location")
    subs = command("subscriptions", "reg event subscriptions (RFC 3680): who watches which AOR")
    subs.add_argument("aor", metavar="AOR", nargs="?")


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
    if cmd == "history":
        return "history", {"aor": args.aor, "table": args.table, "since": since(args.since) if args.since else 0.0}
    if cmd == "unregister":
        params = {"aor": args.aor, "table": args.table}
        if args.ruid:
            params["ruid"] = args.ruid
        return "unregister", params
    if cmd in ("stats", "nodes"):
        return cmd, {}
    if cmd == "subscriptions":
        return "subscriptions", {"aor": args.aor} if args.aor else {}
    if cmd == "qualify":
        params = {"table": args.table, "wait": bool(args.aor or args.ruid)}
        if args.aor:
            params["aor"] = args.aor
        if args.ruid:
            params["ruid"] = args.ruid
        return "qualify", params
    if args.name == "show":
        if args.value is not None or args.aor or args.dry_run or args.trim:
            raise ValueError("policy show takes no value, --aor, --dry-run or --trim")
        return "policy.get", {"table": args.table}
    if args.name == "caller-check" and (args.aor or args.value == "inherit" or args.dry_run or args.trim):
        raise ValueError("caller-check is global: on or off, without --aor (it removes no contact)")
    value = _policy_value(args.name, args.value)
    if value is None and not args.aor and args.name != "max-contacts":
        raise ValueError("inherit needs --aor (the global policy is on or off)")
    params = {"name": args.name.replace("-", "_"), "value": value, "table": args.table}
    if args.aor:
        params["aor"] = args.aor
    if args.dry_run:
        return "policy.preview", params
    if args.trim:
        params["trim"] = True
    return "policy.set", params


def since(text: str, now: float | None = None) -> float:
    """Epoch seconds of ``--since``: ISO 8601 (local time unless it names a zone) or a duration
    ago (``90s``, ``15m``, ``1h``, ``2d``)."""
    try:
        return (time.time() if now is None else now) - parse_duration(text)
    except ValueError:
        pass
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"--since {text!r} is neither ISO 8601 (2026-12-06T08:30) nor a duration ago "
                         "(1h, 2d)") from None
def _policy_value(name: str, text: str | None) -> bool | int | None:
    """on/off (True/False), a max-contacts number, or inherit (None)."""
    if text == "inherit":
        return None
    if name == "max-contacts":
        if text is None or not text.isdigit():
            raise ValueError(f"max-contacts needs a number >= 0 (0: no limit) or inherit, not {text!r}")
        return int(text)
    if text not in ("on", "off"):
        raise ValueError(f"policy {name} needs on, off or inherit" + (f", not {text!r}" if text else ""))
    return text == "on"


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
        return exit_codes.USAGE
    path = args.control or str(default_control_path())
    printer = None
    if method == "dump":
        style = "ndjson" if args.ndjson else "json" if args.json else "table"
        printer = DumpPrinter(style, args.table, sys.stdout)
    try:
        result = asyncio.run(_call(path, method, params, printer))
    except OutputClosed:
        return _output_closed()
    except ReplyDropped as exc:
        _say(str(exc))
        return exit_codes.DROPPED
    except ConnectionError as exc:
        _say(f"{exc}{_where_hint(args)}")
        return exit_codes.NO_REGISTRAR
    except TimeoutError:
        if printer is not None and printer.started:
            _say(f"the registrar on {path} stopped answering for {TIMEOUT:g} s in the middle of its reply")
            return exit_codes.DROPPED
        _say(f"no answer from the registrar on {path} within {TIMEOUT:g} s{_where_hint(args)}")
        return exit_codes.NO_REGISTRAR
    except RpcError as exc:
        _say(exc.message)
        return exit_codes.USAGE if exc.code in _USAGE_CODES else exit_codes.FAILED
    try:
        if printer is not None:
            printer.finish()
        elif args.json:
            print(json.dumps(result, indent=2, sort_keys=True), flush=True)
        else:
            print(render(method, result), flush=True)
    except BrokenPipeError:
        return _output_closed()
    return exit_codes.OK


def _output_closed() -> int:
    """`ctl dump | head`: the reader has what it wanted; no second error when Python exits."""
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return exit_codes.FAILED


def _where_hint(args: argparse.Namespace) -> str:
    """Why the default socket may be the wrong one: sudo and cron drop XDG_RUNTIME_DIR."""
    if args.control or os.environ.get("XDG_RUNTIME_DIR"):
        return ""
    return ("; XDG_RUNTIME_DIR is unset, so the default under /tmp was tried: give the registrar's "
            "socket with --control PATH (often /run/user/UID/sipconsole/control.sock), "
            "or run as the registrar's user")


async def _call(path: str, method: str, params: dict[str, Any], printer: DumpPrinter | None) -> Any:
    async with asyncio.timeout(TIMEOUT) as deadline:
        client = await ControlClient(path).connect()
        try:
            if printer is None:
                return await client.call(method, **params)
            loop = asyncio.get_running_loop()

            def each(partial: dict[str, Any]) -> None:
                deadline.reschedule(loop.time() + TIMEOUT)  # progress: the registrar answers
                try:
                    printer.chunk(partial["aors"])
                except BrokenPipeError:  # a ConnectionError, but not the registrar's
                    raise OutputClosed from None

            return await client.call_streamed(method, each, **params)
        finally:
            await client.close()


class OutputClosed(Exception):
    """Our standard output was closed while a dump was printed."""


class DumpPrinter:
    """Prints a dump chunk by chunk as it arrives, never holding the table: as a table (the
    column widths set by the first chunk), as one JSON document with one AOR per line, or
    as ndjson (one AOR per line and nothing else)."""

    def __init__(self, style: str, table_name: str, out: TextIO) -> None:
        self.style = style
        self.table_name = table_name
        self.out = out
        self.aors = 0
        self.contacts = 0
        self.widths: list[int] | None = None

    @property
    def started(self) -> bool:
        return self.aors > 0

    def chunk(self, entries: list[dict[str, Any]]) -> None:
        if not entries:
            return
        if self.style == "table":
            rows = [row for e in entries for row in _contact_rows(e["aor"], e["contacts"])]
            lines = []
            if self.widths is None:
                self.widths = _widths(_CONTACT_HEADERS, rows)
                lines.append(_row(_CONTACT_HEADERS, self.widths))
            lines += [_row(r, self.widths) for r in rows]
            text = "\n".join(lines) + "\n"
        elif self.style == "ndjson":
            text = "".join(json.dumps(e, sort_keys=True) + "\n" for e in entries)
        else:
            text = ",\n    ".join(json.dumps(e, sort_keys=True) for e in entries)
            text = (",\n    " if self.started else '{\n  "aors": [\n    ') + text
        self.aors += len(entries)
        self.contacts += sum(len(e["contacts"]) for e in entries)
        self.out.write(text)

    def finish(self) -> None:
        """The end of the dump: the JSON document's close, or the table's summary line."""
        if self.style == "table":
            self.out.write(f"table {self.table_name}: {self.aors} AORs, {self.contacts} contacts\n")
        elif self.style == "json":
            opening = "\n  ]" if self.started else '{\n  "aors": []'
            self.out.write(f'{opening},\n  "table": {json.dumps(self.table_name)}\n}}\n')
        self.out.flush()


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = _widths(headers, rows)
    return "\n".join([_row(headers, widths)] + [_row(r, widths) for r in rows])


def _widths(headers: list[str], rows: list[list[str]]) -> list[int]:
    return [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]


def _row(cells: list[str], widths: list[int]) -> str:
    return "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()


def _contact_rows(aor: str, contacts: list[dict[str, Any]]) -> list[list[str]]:
    return [[aor, c["addr"], str(c["expires"]), "" if c["q"] is None else f"{c['q']:g}",
             _state(c), _rtt(c.get("rtt_ms")), c["received"], _flow(c), c.get("node", ""),
             c["user_agent"], c["ruid"]]
            for c in contacts]


def _state(status: dict[str, Any]) -> str:
    """A qualify state, and FLAPPING when it changed often lately (qualify-flap-changes/-window)."""
    return status.get("state", "unknown") + (" FLAPPING" if status.get("flapping") else "")


def _history(history: dict[str, Any]) -> str:
    """``show``'s one-line summary of a contact's last probes and state changes."""
    rtts = history["rtts"]
    answered = [v for v in rtts if v is not None]
    if not rtts:
        return "not probed yet"
    text = f"{len(rtts)} probes, {len(rtts) - len(answered)} unanswered"
    if answered:
        text += (f"; RTT min/avg/max {min(answered):.1f}/{sum(answered) / len(answered):.1f}/"
                 f"{max(answered):.1f} ms, last {_rtt(answered[-1])} ms")
    changes = history["changes"]
    if changes:
        text += f"; {len(changes)} state changes, last {changes[-1][1]} at {_iso(changes[-1][0])}"
    return text + ("; FLAPPING" if history["flapping"] else "")


def _flow(contact: dict[str, Any]) -> str:
    """The connection a contact is reached through (TCP, TLS, WS, WSS), empty for UDP."""
    return "" if contact.get("conid") is None else f"conn {contact['conid']}"


def _rtt(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


_CONTACT_HEADERS = ["AOR", "CONTACT", "EXPIRES", "Q", "STATE", "RTT(ms)", "RECEIVED", "FLOW", "NODE", "USER-AGENT",
                    "RUID"]


def render(method: str, result: Any) -> str:
    """The plain-text form of every reply but dump's (DumpPrinter prints that as it comes)."""
    if method == "show":
        blocks = [f"AOR: {result['aor']}  ({result['count']} contacts)"]
        for c in result["contacts"]:
            blocks.append("\n".join(f"  {k:>10}: {_shown(k, v)}" for k, v in sorted(c.items())))
        return "\n\n".join(blocks)
    if method == "history":
        rows = [[_local(e["ts"]), describe(e["event"]), e["addr"], e["received"], e["detail"], e["ruid"]]
                for e in result["entries"]]
        if not rows:
            return f"{result['aor']}: no journal entries"
        return table(["TIME", "EVENT", "CONTACT", "RECEIVED", "DETAIL", "RUID"], rows)
    if method == "qualify":
        rows = [[ruid, _state(s), _rtt(s["rtt_ms"]), s["reason"]] for ruid, s in sorted(result["contacts"].items())]
        return table(["RUID", "STATE", "RTT(ms)", "REASON"], rows)
    if method == "subscriptions":
        rows = [[s["aor"], s["watcher"], s["source"], str(s["expires"]), str(s["version"])]
                for s in result["subscriptions"]]
        return table(["AOR", "WATCHER", "SOURCE", "EXPIRES", "VERSION"], rows)
    if method == "unregister":
        removed = result["removed"]
        return "\n".join(f"removed {c['aor']} {c['addr']} (ruid {c['ruid']})" for c in removed)
    if method == "policy.preview":
        return _preview_text(result)
    if method == "nodes":
        return table(["NODE", "STATE", "ADDRESSES", "REG/S", "HEARTBEAT", "STARTED"],
                     [[n["node"], "up" if n["up"] else "down", " ".join(n["addresses"]), f"{n['rate']:g}",
                       f"{n['heartbeat_age']:.1f}s ago", _iso(n["started"])] for n in result["nodes"]])
    if method in ("policy.get", "policy.set"):
        lines = [f"single-contact: {'on' if result['single_contact'] else 'off'} (global)",
                 f"max-contacts:   {result['max_contacts'] or 'no limit'} (global)",
                 f"caller-check:   {'on' if result['caller_check'] else 'off'}"]
        for aor, on in sorted(result["single_contact_overrides"].items()):
            lines.append(f"single-contact: {'on' if on else 'off'} for {aor}")
        for aor, limit in sorted(result["max_contacts_overrides"].items()):
            lines.append(f"max-contacts:   {limit or 'no limit'} for {aor}")
        if "removed" in result:
            lines += [f"removed {c['aor']} {c['addr']} (ruid {c['ruid']})" for c in result["removed"]]
            lines.append(f"trimmed: {_count(result['removed'], {c['aor'] for c in result['removed']})} removed")
        elif result.get("over", {}).get("contacts"):
            over = result["over"]
            lines.append(f"{over['aors']} AOR{'s' * (over['aors'] != 1)} over the policy by {over['contacts']} "
                         "contact(s), left as they are for now (as Kamailio): "
                         "--dry-run lists them, --trim removes them")
        return "\n".join(lines)
    # register_rate (REGISTERs per second, the last 120 s) is the console's sparkline: JSON only.
    rows = [[k, text] for key, v in result.items() if key != "register_rate" for k, text in _flat(key, v)]
    return table(["STATISTIC", "VALUE"], rows)


def _preview_text(result: dict[str, Any]) -> str:
    """``policy ... --dry-run``: what would go, per AOR, in the order it would go."""
    contacts = [c for entry in result["aors"] for c in entry["contacts"]]
    where = f"for {result['aor']}" if result["aor"] else "for every AOR without its own value"
    name, value = result["name"].replace("_", "-"), result["value"]
    shown = "inherit" if value is None else ("on" if value else "off") if isinstance(value, bool) else value
    head = f"{name} {shown} {where}: would remove {_count(contacts, [e['aor'] for e in result['aors']])}"
    if not contacts:
        return head + " (nothing to trim)"
    rows = [[c["aor"], c["addr"], str(c["expires"]), c["user_agent"], c["ruid"]] for c in contacts]
    return head + " (dry run: nothing changed)\n" + table(["AOR", "CONTACT", "EXPIRES", "USER-AGENT", "RUID"], rows)


def _count(contacts: list[Any], aors: Any) -> str:
    n, m = len(contacts), len(set(aors))
    return f"{n} contact{'s' * (n != 1)} of {m} AOR{'s' * (m != 1)}"


def _flat(key: str, value: Any) -> Iterator[tuple[str, str]]:
    """Rows for one statistic: a dict becomes ``key.sub`` rows (sorted), an empty one ``none``."""
    if isinstance(value, dict) and value:
        for sub, v in sorted(value.items()):
            yield from _flat(f"{key}.{sub}", v)
    elif value is None or isinstance(value, (dict, list, tuple)) and not value:
        yield key, "none"
    else:
        yield key, _text(value)


# A contact's absolute times (epoch seconds in JSON).
_TIMES = frozenset(("expires_at", "modified", "last_checked"))


def _shown(key: str, value: Any) -> str:
    """One attribute of ``show``'s plain form."""
    if key in _TIMES:
        return _iso(value)
    return _history(value) if key == "history" else _text(value)


def _iso(value: Any) -> str:
    """Epoch seconds as ISO 8601 UTC, e.g. 2026-12-06T08:30:00Z."""
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return _text(value)
    return datetime.fromtimestamp(value, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _local(value: float) -> str:
    """Epoch seconds as local time (an operator reads history against their own clock)."""
    return datetime.fromtimestamp(value).strftime("%Y-%m-%d %H:%M:%S")


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
