"""Registrar configuration: defaults, validation, and loading from TOML or options."""

from __future__ import annotations

import difflib
import importlib.util
import ipaddress
import os
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from .location import is_postgres
from .resolver import parse_nameserver
from .sip.limits import Limits


class ConfigError(Exception):
    """A configuration value is wrong; the message names it in one line."""


@dataclass(frozen=True, slots=True)
class Listen:
    proto: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.proto}:{host}:{self.port}"


def parse_listen(text: str) -> Listen:
    """``udp:127.0.0.1:5060`` or ``tcp:[::1]:5060``; an error says which part is wrong."""
    def bad(why: str) -> ConfigError:
        return ConfigError(f"bad listen address {text!r}: {why}")

    proto, _, rest = text.strip().lower().partition(":")
    if proto not in ("udp", "tcp"):
        raise bad(f"unknown transport {proto!r} (udp or tcp)" if rest else
                  "expected PROTO:HOST:PORT, e.g. udp:127.0.0.1:5060")
    host, colon, port = rest.rpartition(":")
    if not colon or not host:
        raise bad(f"expected {proto}:HOST:PORT, e.g. {proto}:127.0.0.1:5060")
    if host.startswith("[") and host.endswith("]"):
        try:
            host = str(ipaddress.IPv6Address(host[1:-1]))
        except ValueError:
            raise bad(f"{host} is not an IPv6 address") from None
    elif ":" in host or "[" in host or "]" in host:
        raise bad(f"an IPv6 address goes in brackets, e.g. {proto}:[::1]:5060")
    if not port.isdigit():
        raise bad(f"the port {port!r} is not a number")
    if int(port) > 65535:
        raise bad(f"the port {int(port)} is out of range (0-65535; 0 picks a free one)")
    return Listen(proto, host, int(port))


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
    single_contact: bool = False
    caller_check: bool = False
    auth: bool = True  # digest authentication of REGISTER; off only for a lab
    # Challenged in this order, others refused. MD5 alone by default: baresip 1.0, sipsak and
    # sipp 3.6 fail on SHA-256 challenges (README, Security).
    auth_algorithms: tuple[str, ...] = ("MD5",)
    auth_key: str = ""  # HMAC key file for nonces; default: auth.key beside the database
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
    dns_server: tuple[str, ...] = ()  # nameservers (IP or IP:PORT) for RFC 3263 lookups; none = resolv.conf

    def __post_init__(self) -> None:
        for name in ("min_expires", "max_expires", "default_expires", "max_contacts", "expires_range",
                     "auth_fail_budget", "ip_budget", "ban_time", "max_tcp_per_ip",
                     "qualify_interval", "qualify_remove_after"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{_opt(name)} must not be negative")
        if self.max_expires and self.min_expires > self.max_expires:
            raise ConfigError("min-expires must not exceed max-expires")
        if self.default_expires < 1:
            raise ConfigError("default-expires must be at least 1")
        if self.min_expires_mode not in ("reject", "clamp"):
            raise ConfigError("min-expires-mode must be 'reject' or 'clamp'")
        if self.max_contacts_status not in (403, 503):
            raise ConfigError("max-contacts-status must be 403 or 503")
        if self.qualify_timeout <= 0:
            raise ConfigError("qualify-timeout must be positive")
        for server in self.dns_server:
            try:
                parse_nameserver(server)
            except ValueError:
                raise ConfigError(f"dns-server: {server!r} is not IP or IP:PORT") from None
        if self.expires_range > 100:
            raise ConfigError("expires-range is a percentage (0-100)")
        if not self.listen:
            raise ConfigError("at least one --listen address is needed")
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
        if is_postgres(self.db) and importlib.util.find_spec("asyncpg") is None:
            raise ConfigError("db: a PostgreSQL database needs asyncpg: pip install 'sipconsole[postgresql]'")

    @property
    def auth_key_path(self) -> Path:
        if self.auth_key:
            return Path(self.auth_key)
        if self.db == ":memory:":
            return _runtime_dir() / "auth.key"
        if is_postgres(self.db):  # beside where the SQLite file would be: this machine's data directory
            return default_db_path().parent / "auth.key"
        return Path(self.db).parent / "auth.key"

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
    "min_expires_mode": str,
    "dns_server": lambda v: tuple(str(x) for x in _as_list(v)),
    "trusted": lambda v: tuple(c.strip() for x in _as_list(v) for c in str(x).split(",") if c.strip()),
}


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
