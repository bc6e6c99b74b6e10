"""Registrar configuration: defaults, validation, and loading from TOML or options."""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import socket
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .journal import DEFAULT_MAX_ROWS, DEFAULT_RETENTION, parse_duration
from .location import is_postgres
from .reachability import HISTORY
from .resolver import parse_nameserver
from .sip.limits import Limits
from .source import format_address
from .tls import server_context


class ConfigError(Exception):
    """A configuration value is wrong; the message names it in one line."""


@dataclass(frozen=True, slots=True)
class Listen:
    proto: str
    host: str
    port: int

    def __str__(self) -> str:
        return format_address(self.proto, self.host, self.port)


TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
SECURE = ("tls", "wss")  # listeners that need --tls-cert and --tls-key


def parse_listen(text: str) -> Listen:
    """``udp:127.0.0.1:5060``, ``tcp:[::1]:5060``, ``tls:``, ``ws:`` or ``wss:``; an error
    says which part is wrong."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad listen address {text!r}: {why}")

    proto, _, rest = text.strip().lower().partition(":")
    if proto not in TRANSPORTS:
        raise bad(f"unknown transport {proto!r} ({', '.join(TRANSPORTS)})" if rest else
                  "expected PROTO:HOST:PORT, e.g. udp:127.0.0.1:5060")
    host, port = _host_port(rest, f"{proto}:", 5060, bad)
    return Listen(proto, host, port)


def parse_metrics_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` of the metrics endpoint, or a port alone for loopback (127.0.0.1)."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad metrics-listen address {text!r}: {why}")

    rest = text.strip().lower()
    return _host_port(f"127.0.0.1:{rest}" if rest.isdigit() else rest, "", 9090, bad)


def _host_port(rest: str, prefix: str, example: int, bad: Callable[[str], ConfigError]) -> tuple[str, int]:
    """HOST:PORT (IPv6 in brackets) as (host, port); ``prefix`` and ``example`` make the hints."""
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise bad(f"expected {prefix}HOST:PORT, e.g. {prefix}127.0.0.1:{example}")
    if host.startswith("[") and host.endswith("]"):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise bad(f"{host} is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise bad(f"an IPv6 address goes in brackets, e.g. {prefix}[::1]:{example}")
    if not port.isdigit():
        raise bad(f"the port {port!r} is not a number")
    if int(port) > 65535:
        raise bad(f"the port {int(port)} is out of range (0-65535; 0 picks a free one)")
    return host, int(port)


def _runtime_dir() -> Path:
    base = os.environ.get("XDG_RUNTIME_DIR")
    return Path(base) / "sipconsole" if base else Path(f"/tmp/sipconsole-{os.getuid()}")


def default_control_path() -> Path:
    return _runtime_dir() / "control.sock"


def default_db_path() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "sipconsole" / "location.db"


@dataclass(frozen=True)
class Config:
    listen: tuple[Listen, ...] = (Listen("udp", "127.0.0.1", 5060), Listen("tcp", "127.0.0.1", 5060))
    db: str = field(default_factory=lambda: str(default_db_path()))
    control: str = field(default_factory=lambda: str(default_control_path()))
    domain: tuple[str, ...] = ()
    min_expires: int = 60
    max_expires: int = 7200
    default_expires: int = 3600
    min_expires_mode: str = "reject"  # "reject" answers 423, "clamp" raises to the minimum
    expires_range: int = 0  # percent of randomisation, as Kamailio's default_expires_range
    max_contacts: int = 0  # 0 = no limit
    max_contacts_status: int = 503  # Kamailio answers 503, Asterisk 403
    # Over max-contacts: "reject" the REGISTER (Kamailio), or "evict-oldest", removing the
    # bindings closest to expiry (Asterisk remove_existing, OpenSIPS force-registration).
    max_contacts_mode: str = "reject"
    single_contact: bool = False
    caller_check: bool = False
    auth: bool = True  # digest authentication of REGISTER; off only for a lab
    # Challenged in this order, others refused. MD5 alone by default: baresip 1.0, sipsak and
    # sipp 3.6 fail on SHA-256 challenges (README, Security).
    auth_algorithms: tuple[str, ...] = ("MD5",)
    auth_key: str = ""  # MAC key file for nonces; default: auth.key beside the database
    auth_fail_budget: int = 5  # failed authentications per user per minute before a ban
    ip_budget: int = 400  # requests per source IP per 2 s before a ban (pike); 0 = no limit
    ban_time: int = 300  # seconds an IP or user stays banned
    # Exempt from ip-budget and bans (not from authentication): an edge proxy or SBC, through
    # which every phone arrives from one address, and loopback, where load tests run.
    trusted: tuple[str, ...] = ("127.0.0.0/8", "::1")
    drop_scanners: bool = True  # silently drop known scanner User-Agents (sipvicious...)
    max_tcp_per_ip: int = 64
    tcp_idle_timeout: float = 600.0
    tcp_read_timeout: float = 20.0  # a TCP message must arrive whole within this (slowloris)
    max_tcp_connections: int = 0  # 0 = the descriptor limit less a reserve
    max_message_size: int = 65_535
    max_headers: int = 128
    qualify_interval: float = 0.0  # seconds between OPTIONS to each contact; 0 = off (Asterisk qualify_frequency)
    qualify_timeout: float = 3.0  # seconds to wait for the answer (Asterisk qualify_timeout)
    qualify_remove_after: int = 0  # remove a contact after N unanswered probes in a row; 0 = never
    # Flapping: at least this many reachable/unreachable changes within the window (seconds).
    qualify_flap_changes: int = 4
    qualify_flap_window: float = 600.0
    dns_server: tuple[str, ...] = ()  # nameservers (IP or IP:PORT) for RFC 3263 lookups; none = resolv.conf
    tls_cert: str = ""  # PEM certificate chain of tls: and wss: listeners
    tls_key: str = ""  # PEM private key of that certificate
    tls_ca: str = ""  # PEM CA bundle: when given, clients must present a certificate it signed
    tls_handshake_timeout: float = 10.0  # a TLS or WebSocket handshake must finish within this
    ws_path: str = "/"  # the WebSocket resource (RFC 6455 request path) of ws: and wss: listeners
    ws_origins: tuple[str, ...] = ()  # allowed Origin headers of WebSocket clients; none = any
    # Keep a TLS/WS contact until it expires when its connection closes (default: remove it,
    # Kamailio's handle_lost_tcp: nothing can reach a flow that is gone, RFC 5626/7118).
    keep_flow_contacts: bool = False
    metrics_listen: str = ""  # HOST:PORT of the Prometheus endpoint (a port alone: loopback); "" = off
    node_name: str = ""  # this registrar among those sharing a database; "" = hostname/first listen address
    # The contact journal (why each binding came and went) keeps rows this many seconds, and at
    # most this many rows (the oldest go first); pruned by the expiry sweeper (journal.py).
    journal_retention: float = DEFAULT_RETENTION
    journal_max_rows: int = DEFAULT_MAX_ROWS

    def __post_init__(self) -> None:
        for name in ("min_expires", "max_expires", "default_expires", "max_contacts", "expires_range",
                     "auth_fail_budget", "ip_budget", "ban_time", "max_tcp_per_ip",
                     "qualify_interval", "qualify_remove_after", "journal_retention"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_opt(name)} must not be negative")
        if self.max_expires and self.min_expires > self.max_expires:
            raise ConfigError("min-expires must not exceed max-expires")
        if self.default_expires < 1:
            raise ConfigError("default-expires must be at least 1")
        if self.min_expires_mode not in ("reject", "clamp"):
            raise ConfigError("min-expires-mode must be 'reject' or 'clamp'")
        if self.max_contacts_mode not in ("reject", "evict-oldest"):
            raise ConfigError("max-contacts-mode must be 'reject' or 'evict-oldest'")
        if self.max_contacts_status not in (403, 503):
            raise ConfigError("max-contacts-status must be 403 or 503")
        if self.qualify_timeout <= 0:
            raise ConfigError("qualify-timeout must be positive")
        if not 2 <= self.qualify_flap_changes <= HISTORY:
            raise ConfigError(f"qualify-flap-changes must be 2 to {HISTORY} (the state changes kept per contact)")
        if self.qualify_flap_window <= 0:
            raise ConfigError("qualify-flap-window must be positive (seconds)")
        for server in self.dns_server:
            try:
                parse_nameserver(server)
            except ValueError:
                raise ConfigError(f"dns-server: {server!r} is not IP or IP:PORT") from None
        if self.expires_range > 100:
            raise ConfigError("expires-range is a percentage (0-100)")
        if not self.listen:
            raise ConfigError("at least one --listen address is needed")
        if any(c.isspace() for c in self.node_name) or len(self.node_name) > 64:
            raise ConfigError(f"node-name {self.node_name!r}: at most 64 characters, no spaces")
        unknown = [a for a in self.auth_algorithms if a not in ("SHA-256", "SHA-512-256", "MD5")]
        if unknown or not self.auth_algorithms:
            raise ConfigError("auth-algorithms: choose from SHA-256, SHA-512-256, MD5")
        if self.tcp_idle_timeout <= 0 or self.tcp_read_timeout <= 0:
            raise ConfigError("tcp-idle-timeout and tcp-read-timeout must be positive")
        for cidr in self.trusted:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                raise ConfigError(f"trusted: {cidr!r} is not an address or CIDR (e.g. 10.0.0.0/8, ::1)") from None
        if self.max_tcp_connections < 0:
            raise ConfigError("max-tcp-connections must not be negative")
        secure = [str(spec) for spec in self.listen if spec.proto in SECURE]
        if secure and not (self.tls_cert and self.tls_key):
            raise ConfigError(f"{secure[0]} needs a certificate: give --tls-cert FILE and --tls-key FILE "
                              "(PEM; for a lab, README \"TLS and WebSocket\" makes one with openssl)")
        if not secure and (self.tls_cert or self.tls_key or self.tls_ca):
            raise ConfigError("--tls-cert/--tls-key/--tls-ca without a tls: or wss: listener: add one with --listen")
        if not self.ws_path.startswith("/"):
            raise ConfigError(f"ws-path must start with '/', e.g. /ws (got {self.ws_path!r})")
        if self.journal_max_rows < 1:
            raise ConfigError("journal-max-rows must be at least 1")
        if self.tls_handshake_timeout <= 0:
            raise ConfigError("tls-handshake-timeout must be positive")
        if self.metrics_listen:
            parse_metrics_listen(self.metrics_listen)
        if is_postgres(self.db) and importlib.util.find_spec("asyncpg") is None:
            raise ConfigError("db: a PostgreSQL database needs asyncpg: pip install 'sipconsole[postgresql]'")

    def check_certificate(self) -> None:
        """Load the TLS certificate, key and CA now, so that one that does not load is a usage
        error before anything starts. Not in __post_init__: `ctl` and `attach` read the same
        config file for the control socket, and need not be able to read the private key."""
        if any(spec.proto in SECURE for spec in self.listen):
            try:
                server_context(self.tls_cert, self.tls_key, self.tls_ca)
            except ValueError as exc:
                raise ConfigError(str(exc)) from None

    @property
    def auth_key_path(self) -> Path:
        return Path(self.auth_key) if self.auth_key else self.files_dir / "auth.key"

    @property
    def files_dir(self) -> Path:
        """Where this registrar's own files go (the nonce key, the console's log): beside the
        SQLite file; for a PostgreSQL database, this machine's data directory; for :memory:,
        the runtime directory."""
        if self.db == ":memory:":
            return _runtime_dir()
        if is_postgres(self.db):
            return default_db_path().parent
        return Path(self.db).expanduser().parent

    @property
    def node(self) -> str:
        """This registrar's name in a shared database (which node holds a contact's flow):
        ``node_name``, else the hostname and the first listen address (unique per machine)."""
        return self.node_name or f"{socket.gethostname()}/{self.listen[0]}"

    @property
    def limits(self) -> Limits:
        return Limits(max_message_size=self.max_message_size, max_headers=self.max_headers)


def _opt(name: str) -> str:
    return name.replace("_", "-")


_CONVERTERS: dict[str, Any] = {
    "listen": lambda v: tuple(parse_listen(x) for x in _as_list(v)),
    "domain": lambda v: tuple(str(x).lower() for x in _as_list(v)),
    "auth_algorithms": lambda v: tuple(
        a.strip().upper() for x in _as_list(v) for a in str(x).split(",") if a.strip()),
    "db": str,
    "control": str,
    "auth_key": str,
    "tls_cert": str,
    "tls_key": str,
    "tls_ca": str,
    "ws_path": str,
    "ws_origins": lambda v: tuple(o.strip() for x in _as_list(v) for o in str(x).split(",") if o.strip()),
    "min_expires_mode": str,
    "max_contacts_mode": str,
    "metrics_listen": str,
    "node_name": str,
    "journal_retention": lambda v: _duration("journal_retention", v),
    "dns_server": lambda v: tuple(str(x) for x in _as_list(v)),
    "trusted": lambda v: tuple(c.strip() for x in _as_list(v) for c in str(x).split(",") if c.strip()),
}


def _duration(name: str, value: Any) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        raise ConfigError(f"{_opt(name)}: {value!r} is not a duration (e.g. 7d, 12h, 30m, 3600)") from None


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    """The nearest known setting as a hint, or where the list of them is."""
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if close:
        return f": did you mean {_opt(close[0])!r}?"
    return " (every option of `sipconsole serve --help` is a setting)"


def _as_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("on", "off", "true", "false", "yes", "no"):
        return value.lower() in ("on", "true", "yes")
    raise ValueError(value)


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def build_config(values: dict[str, Any]) -> Config:
    """A Config from a mapping of option names (dashes or underscores); None means default."""
    known = {f.name: f for f in fields(Config)}
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        name = key.replace("-", "_")
        if name not in known:
            raise ConfigError(f"unknown setting {key!r}{_did_you_mean(name, known)}")
        if value is None:
            continue
        convert = _CONVERTERS.get(name)
        default = known[name].default
        try:
            if convert is not None:
                kwargs[name] = convert(value)
            elif isinstance(default, bool):
                kwargs[name] = _as_bool(value)
            elif isinstance(default, float):
                kwargs[name] = float(value)
            else:
                if isinstance(value, bool):
                    raise ValueError
                kwargs[name] = int(value)
        except ConfigError:
            raise
        except (TypeError, ValueError):
            raise ConfigError(f"{_opt(name)}: invalid value {value!r}") from None
    return Config(**kwargs)


def load_toml(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
