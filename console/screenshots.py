"""Render the README screenshots from a real registrar: ``python -m console.screenshots``.

Starts a core on free ports with a scratch database, registers a handful of
realistic phones through real UDP sockets (varied user agents, q values, several
contacts per AOR, a Path, an outbound instance), sends some keepalives and calls,
and saves SVGs of the main screen, a contact's detail, the confirmation modal and
the help screen into ``screenshots/``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from textual.pilot import Pilot

from registrar_core.config import build_config
from registrar_core.control import LocalClient
from registrar_core.server import Server

from .app import SipConsole

SIZE = (150, 44)
DOMAIN = "example.com"


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
    call_id: str = field(default_factory=lambda: secrets.token_hex(10))
    cseq: int = 0
    transport: asyncio.DatagramTransport | None = None
    inbox: Inbox = field(default_factory=Inbox)

    async def open(self) -> Phone:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self.inbox, local_addr=("127.0.0.1", 0))
        return self

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def _request(self, method: str, uri: str, to: str, extra: list[str]) -> bytes:
        self.cseq += 1
        lines = [
            f"{method} {uri} SIP/2.0",
            f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch=z9hG4bK{secrets.token_hex(6)};rport",
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
        aor = f"sip:{self.user}@{DOMAIN}"
        return await self.send("REGISTER", f"sip:{DOMAIN}", aor, extra)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


DESK_PHONES = ("Yealink SIP-T54W 96.86.0.100", "Poly Edge E350 8.0.1.7520", "Grandstream GRP2614 1.0.5.67",
               "snom D735/10.1.141.13", "Fanvil X4U 2.12.12.2")


def fleet(registrar: tuple[str, int]) -> list[Phone]:
    """A small office: desk phones, softphones, mobile apps behind an edge proxy, a PBX trunk."""
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
            "min_expires": 30, "auth": False,
        })
        server = Server(config)
        await server.start()
        phones = fleet(("127.0.0.1", port))
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
                await pilot.press("s")  # an AOR override, shown in the Policy column
                await settle(app, pilot)
                save("main")
                await pilot.press("tab", "down", "enter")
                await settle(app, pilot)
                save("contact-detail")
                await pilot.press("escape", "shift+tab", "D")
                await settle(app, pilot)
                save("confirm-unregister-aor")
                await pilot.press("n", "question_mark")
                await settle(app, pilot)
                save("help")
        finally:
            for phone in phones:
                phone.close()
            await server.stop()
    return saved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="screenshots", help="directory for the SVGs (default screenshots/)")
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    for path in asyncio.run(render(out)):
        print(path)


if __name__ == "__main__":
    main()
