"""Render the README screenshots from a real registrar: ``python -m console.screenshots``.

Starts a core on free ports with a scratch database and digest authentication on,
adds the office's subscribers, registers a handful of realistic phones through real
UDP sockets, each from its own loopback address (varied user agents, q values, several
contacts per AOR, a Path, an outbound instance), answering the digest challenges; then
some keepalives and calls, a phone with a wrong password, a scanner and a flood that
gets its address banned. Saves SVGs of the main screen (also at 80x24), a contact's detail,
the confirmation modals (unregister, single-contact with its preview), the help, the subscribers
screen and its add form, and (after alice's mobile signs off and her desk phone's firmware changes
under single-contact) alice's history into ``screenshots/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import re
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from textual.pilot import Pilot

from registrar_core.auth import digest
from registrar_core.config import build_config
from registrar_core.control import LocalClient
from registrar_core.server import Server

from .app import SipConsole

SIZE = (150, 44)
SMALL = (80, 24)  # the smallest terminal the console is made for
DOMAIN = "example.com"
IP_BUDGET = 60  # requests per address per 2 s
FLOOD = 80


CHALLENGE = re.compile(rb"^WWW-Authenticate: Digest (.*?)\r$", re.M | re.I)


def password_of(user: str) -> str:
    return f"{user}-s3cret"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Inbox(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.replies.put_nowait(data)


@dataclass
class Phone:
    """One SIP device on its own UDP socket."""

    user: str
    agent: str
    registrar: tuple[str, int]
    q: float | None = None
    expires: int = 3600
    path: str | None = None
    instance: str | None = None
    ip: str = "127.0.0.1"
    password: str | None = None  # None: the subscriber's own
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    cseq: int = 0
    transport: asyncio.DatagramTransport | None = None
    inbox: Inbox = field(default_factory=Inbox)
    challenge: dict[str, str] | None = None
    nc: int = 0

    async def open(self) -> Phone:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self.inbox, local_addr=(self.ip, 0))
        return self

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def _request(self, method: str, uri: str, to: str, extra: list[str]) -> bytes:
        self.cseq += 1
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP {self.ip}:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
            "Max-Forwards: 70",
            f"From: <sip:{self.user}@{DOMAIN}>;tag={secrets.token_hex(4)}",
            f"To: <{to}>",
            f"Call-ID: {self.call_id if method == 'REGISTER' else secrets.token_hex(10)}",
            f"CSeq: {self.cseq} {method}",
            f"User-Agent: {self.agent}",
            *extra,
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()

    async def send(self, method: str, uri: str, to: str, extra: list[str] | None = None) -> bytes:
        assert self.transport is not None
        self.transport.sendto(self._request(method, uri, to, extra or []), self.registrar)
        return await asyncio.wait_for(self.inbox.replies.get(), 3)

    def authorization(self, uri: str) -> str:
        """Digest credentials for the last challenge (nonce reused, nc counting up)."""
        assert self.challenge is not None
        ch, algorithm = self.challenge, self.challenge["algorithm"]
        self.nc += 1
        cnonce = secrets.token_hex(4)
        password = self.password or password_of(self.user)
        h1 = digest.ha1(algorithm, self.user, ch["realm"], password)
        resp = digest.response(algorithm, h1, ch["nonce"], f"{self.nc:08x}", cnonce, "auth", "REGISTER", uri)
        return (f'Authorization: Digest username="{self.user}", realm="{ch["realm"]}", nonce="{ch["nonce"]}", '
                f'uri="{uri}", response="{resp}", algorithm={algorithm}, qop=auth, nc={self.nc:08x}, '
                f'cnonce="{cnonce}"')

    async def register(self, expires: int | None = None) -> bytes:
        params = ""
        if self.instance:
            params += f';+sip.instance="<urn:uuid:{self.instance}>";reg-id=1'
        if self.q is not None:
            params += f";q={self.q}"
        extra = [f"Contact: <sip:{self.user}@127.0.0.1:{self.port};transport=udp>{params}",
                 f"Expires: {self.expires if expires is None else expires}",
                 "Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, MESSAGE, NOTIFY, REFER",
                 "Supported: path, outbound" if (self.path or self.instance) else "Supported: replaces"]
        if self.path:
            extra.append(f"Path: {self.path}")
        aor, uri = f"sip:{self.user}@{DOMAIN}", f"sip:{DOMAIN}"
        if self.challenge is not None:  # as phones do: the last nonce again, the next nc
            reply = await self.send("REGISTER", uri, aor, [*extra, self.authorization(uri)])
        else:
            reply = await self.send("REGISTER", uri, aor, extra)
        found = CHALLENGE.search(reply) if reply.startswith(b"SIP/2.0 401") else None
        if found is None:
            return reply
        self.challenge = {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', found.group(1).decode())}
        self.nc = 0
        return await self.send("REGISTER", uri, aor, [*extra, self.authorization(uri)])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


DESK_PHONES = ("Yealink SIP-T54W 96.86.0.100", "Poly Edge E350 8.0.1.7520", "Grandstream GRP2614 1.0.5.67",
               "snom D735/10.1.141.13", "Fanvil X4U 2.12.12.2")


def fleet(registrar: tuple[str, int]) -> list[Phone]:
    """A small office: desk phones, softphones, mobile apps behind an edge proxy, a PBX trunk;
    each device on its own loopback address."""
    phones = _fleet(registrar)
    for n, phone in enumerate(phones, 10):
        phone.ip = f"127.0.0.{n}"
    return phones


def _fleet(registrar: tuple[str, int]) -> list[Phone]:
    edge = "<sip:edge1.example.net;lr>"
    named = [
        Phone("alice", "Yealink SIP-T46U 108.86.0.20", registrar, q=1.0),
        Phone("alice", "Linphone-Android/5.2.5 (Pixel 7) LinphoneSDK/5.3.47", registrar, q=0.5, expires=600,
              path=edge, instance="8b3f1c2e-5d0a-4f6b-9c71-2a9e4d6f0b13"),
        Phone("alice", "Zoiper rv2.10.20.3", registrar, q=0.2, expires=1800),
        Phone("bob", "Polycom VVX 450 6.4.6.2410", registrar, expires=3600),
        Phone("bob", "MicroSIP/3.21.3", registrar, q=0.7, expires=300),
        Phone("carol", "Grandstream GXP2170 1.0.11.74", registrar, expires=900),
        Phone("dave", "snom D785/10.1.159.12", registrar, expires=120),
        Phone("erin", "Cisco/SPA504G-7.6.2", registrar, expires=45),
        Phone("frank", "Obihai OBi202 3.2.2 (Build: 5921EX)", registrar, expires=2400),
        Phone("grace", "Bria 6.7.0 build 119851", registrar, q=0.9, expires=3600, path=edge,
              instance="c0ffee00-1d2b-4c3d-8e4f-5a6b7c8d9e0f"),
        Phone("pbx-trunk", "Asterisk PBX 20.5.0", registrar, expires=300),
        Phone("reception", "Fanvil X6U 2.12.1", registrar, expires=3600),
    ]
    floor = [Phone(f"{2001 + i}", DESK_PHONES[i % len(DESK_PHONES)], registrar, expires=600 + 300 * (i % 7))
             for i in range(14)]
    return named + floor


async def populate(phones: list[Phone], seconds: float) -> None:
    """Register everyone, then everyday traffic for a while: refreshes, keepalives, calls, mistakes."""
    rng = random.Random(5060)
    for phone in phones:
        await phone.open()
        await phone.register()
    alice, bob, erin, reception = phones[0], phones[3], phones[7], phones[11]
    await erin.register(expires=10)  # too brief: 423
    await alice.send("INVITE", f"sip:bob@{DOMAIN}", f"sip:bob@{DOMAIN}")  # 302 to bob's contacts
    await bob.send("MESSAGE", f"sip:nobody@{DOMAIN}", f"sip:nobody@{DOMAIN}")  # 404
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        await asyncio.sleep(rng.uniform(0.05, 0.4))
        await rng.choice(phones).register()
        if rng.random() < 0.2:
            await bob.send("OPTIONS", f"sip:{DOMAIN}", f"sip:{DOMAIN}")
    await reception.register(expires=0)  # signs off
    await misconfigured(phones[0].registrar)


async def journal_story(phones: list[Phone]) -> None:
    """What alice's history shows: her mobile signs off, her desk phone comes back with new
    firmware (a refresh that changes something) and, single-contact being on for her, takes
    the place of her softphone."""
    desk, mobile = phones[0], phones[1]
    await mobile.register(expires=0)
    desk.agent = "Yealink SIP-T46U 108.86.0.40"
    await desk.register()


async def misconfigured(registrar: tuple[str, int]) -> None:
    """What the security counters count: a wrong password, a hijack attempt, a scanner, a flood."""
    typo = await Phone("dave", "snom D785/10.1.159.12", registrar, ip="127.0.0.77", password="dave-secret").open()
    await typo.register()  # 401, then 401 again: the wrong password
    hijack = await Phone("frank", "Obihai OBi202 3.2.2 (Build: 5921EX)", registrar, ip="127.0.0.78").open()
    hijack.challenge = None
    extra = [f"Contact: <sip:frank@127.0.0.78:{hijack.port}>", "Expires: 600"]
    reply = await hijack.send("REGISTER", f"sip:{DOMAIN}", f"sip:carol@{DOMAIN}", extra)  # 401
    found = CHALLENGE.search(reply)
    if found is not None:  # answers as frank for carol's AOR: 403
        hijack.challenge = {k.lower(): v for k, v in re.findall(r'(\w+)="?([^",]*)"?', found.group(1).decode())}
        await hijack.send("REGISTER", f"sip:{DOMAIN}", f"sip:carol@{DOMAIN}",
                          [*extra, hijack.authorization(f"sip:{DOMAIN}")])
    loop = asyncio.get_running_loop()
    scanner, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.66", 0))
    port = scanner.get_extra_info("sockname")[1]
    for n in range(3):  # sipvicious-style OPTIONS sweep: dropped without a word
        scanner.sendto((f"OPTIONS sip:{100 + n}@{DOMAIN} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.66:{port};"
                        f"branch=z9hG4bK{secrets.token_hex(4)}\r\nFrom: <sip:100@{DOMAIN}>;tag=1\r\n"
                        f"To: <sip:{100 + n}@{DOMAIN}>\r\nCall-ID: {secrets.token_hex(6)}\r\nCSeq: 1 OPTIONS\r\n"
                        "User-Agent: friendly-scanner\r\nContent-Length: 0\r\n\r\n").encode(), registrar)
    flood, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.99", 0))
    for _ in range(FLOOD):  # garbage past the per-address budget: banned
        flood.sendto(b"\x16\x03\x01 not sip at all\r\n\r\n", registrar)
    await asyncio.sleep(0.3)
    for t in (typo, hijack):
        t.close()
    scanner.close()
    flood.close()


async def settle(app: SipConsole, pilot: Pilot[None]) -> None:
    """Wait until the console has applied what the registrar sent."""
    main = app.main
    for _ in range(100):
        await pilot.pause(0.05)
        if main.loaded and not len(main.buffer) and main.status.stats is not None:
            break
    await pilot.pause(0.3)


async def render(out: Path) -> list[Path]:
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="sc-shots-") as scratch:
        config = build_config({
            "listen": [f"udp:127.0.0.1:{port}", f"tcp:127.0.0.1:{port}"],
            "db": f"{scratch}/location.db", "control": f"{scratch}/control.sock",
            "min_expires": 30, "auth": True, "ip_budget": IP_BUDGET,
        })
        server = Server(config)
        await server.start()
        phones = fleet(("127.0.0.1", port))
        for user in sorted({p.user for p in phones} | {"henry", "ivan"}):  # two not registered yet
            await server.core.subscribers.add(f"{user}@{DOMAIN}", password_of(user))
        app = SipConsole(LocalClient(server.core), embedded=True)
        saved: list[Path] = []

        def save(name: str) -> None:
            path = out / f"{name}.svg"
            path.write_text(app.export_screenshot(title=f"sipconsole — {name.replace('-', ' ')}"))
            saved.append(path)

        try:
            async with app.run_test(size=SIZE) as pilot:
                await settle(app, pilot)
                await populate(phones, seconds=9)
                await settle(app, pilot)
                main = app.main
                main.aors.move_cursor(main.registry.position(f"alice@{DOMAIN}") or 0)
                await pilot.press("s")  # single-contact on for alice: it asks, showing what a trim removes
                await settle(app, pilot)
                save("confirm-single-contact")
                await pilot.press("o")  # on, nothing removed now: an AOR override, shown in the Policy column
                await settle(app, pilot)
                app.clear_notifications()  # the toasts would hide the traffic
                await pilot.pause(0.1)
                save("main")
                await pilot.resize_terminal(*SMALL)
                await settle(app, pilot)
                save("main-80x24")
                await pilot.resize_terminal(*SIZE)
                await settle(app, pilot)
                await pilot.press("tab", "down", "enter")
                await settle(app, pilot)
                save("contact-detail")
                await pilot.press("escape", "shift+tab", "D")
                await settle(app, pilot)
                save("confirm-unregister-aor")
                await pilot.press("n", "question_mark")
                await settle(app, pilot)
                save("help")
                await pilot.press("escape", "u")
                await settle(app, pilot)
                save("subscribers")
                await pilot.press("a", *"judy@example.com", "enter", *"correct horse", "enter", *"correct horse")
                await settle(app, pilot)
                save("subscriber-add")
                await journal_story(phones)
                await pilot.press("escape", "escape")
                await settle(app, pilot)
                main.aors.move_cursor(main.registry.position(f"alice@{DOMAIN}") or 0)
                await pilot.press("H")
                await settle(app, pilot)
                await pilot.pause(0.5)  # the journal is read through the control protocol
                save("history")
        finally:
            for phone in phones:
                phone.close()
            await server.stop()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="screenshots", help="directory for the SVGs (default screenshots/)")
    out = Path(parser.parse_args().out)
    logging.basicConfig(level=logging.ERROR)  # the SIPSEC lines of the staged attacks are expected
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(render(out)):
        print(path)


if __name__ == "__main__":
    main()
