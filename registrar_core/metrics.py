"""Prometheus text exposition (format 0.0.4) of the registrar's state, written at scrape time.

Written to the format rather than with prometheus_client: every counter already exists
(:class:`~registrar_core.stats.Stats`, :meth:`RegistrarCore.snapshot_stats`) and is read
when Prometheus asks, so a client library's registry would only mirror them; its HTTP server
runs in a thread, where reading the core's state would race the event loop. The format is
a few lines per metric (:func:`render`), served on the registrar's own loop (metrics_http.py).

The only things observed as they happen are the three histograms (:class:`Histogram`): a
bisect and two additions per group commit or qualify probe, never per REGISTER, so they
stay on whether or not anyone scrapes.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import RegistrarCore

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Upper bounds (Prometheus "le"). Group commit latency: one fsync on an SSD is ~1 ms, a
# loaded disk tens. Qualify RTT: a LAN answers in a millisecond, a mobile phone in hundreds.
COMMIT_SIZE_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0)
COMMIT_SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
RTT_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """Bucket counts of observed values: what a Prometheus histogram exposes, kept as plain
    counts per bucket (made cumulative only when rendered)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # le: a value on a bound counts in it
        self.sum += value


def render(core: RegistrarCore) -> str:
    """The whole exposition: every metric with its HELP and TYPE."""
    s = core.snapshot_stats()
    location = core.location
    out: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: Iterable[tuple[dict[str, str], float]]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            out.append(f"{name}{_labels(labels)} {_number(value)}")

    def one(name: str, kind: str, help_text: str, value: float) -> None:
        metric(name, kind, help_text, [({}, value)])

    def by(label: str, counts: dict[str, Any]) -> list[tuple[dict[str, str], float]]:
        return [({label: key}, value) for key, value in sorted(counts.items())]

    metric("sipconsole_registers_total", "counter",
           "REGISTERs answered, by result (challenged: a digest challenge, the first half of a healthy login)",
           by("result", {"accepted": s["accepted_regs"], "challenged": s["challenged"],
                         "rejected": s["rejected_regs"]}))
    metric("sipconsole_requests_total", "counter", "SIP requests received, by method", by("method", s["requests"]))
    metric("sipconsole_responses_total", "counter", "SIP responses sent, by status code", by("code", s["responses"]))
    one("sipconsole_retransmissions_total", "counter", "retransmitted requests answered from the transaction layer",
        s["retransmissions"])
    one("sipconsole_parse_errors_total", "counter", "messages that did not parse as SIP", s["parse_errors"])
    one("sipconsole_keepalives_total", "counter", "UDP CRLF and STUN keepalives", s["keepalives"])
    one("sipconsole_aors", "gauge", "addresses of record with at least one contact", s["registered_users"])
    one("sipconsole_contacts", "gauge", "contacts in the location table", s["location_contacts"])
    metric("sipconsole_contacts_by_transport", "gauge", "live contacts by the transport they registered over",
           by("transport", location.contacts_by_transport(location.clock())))
    one("sipconsole_contacts_expired_total", "counter", "contacts removed because they expired",
        s["expired_contacts"])
    one("sipconsole_auth_failures_total", "counter", "REGISTERs with wrong digest credentials",
        s["security"].get("auth-failed", 0))
    metric("sipconsole_security_events_total", "counter",
           "security events by kind (ban, unban, auth-failed, user-banned, wrong-aor, scanner)",
           by("event", s["security"]))
    one("sipconsole_banned_ips", "gauge", "source addresses banned now", len(s["banned_ips"]))
    one("sipconsole_subscribers", "gauge", "digest subscribers", s["subscribers"])
    metric("sipconsole_qualify_contacts", "gauge", "contacts by qualify reachability state",
           by("state", {"reachable": s["qualify_reachable"], "unreachable": s["qualify_unreachable"],
                        "unknown": s["qualify_unknown"]}))
    one("sipconsole_qualify_sent_total", "counter", "qualify OPTIONS probes sent", s["qualify_sent"])
    one("sipconsole_qualify_timeouts_total", "counter", "qualify probes that timed out", s["qualify_timeouts"])
    _histogram(out, "sipconsole_qualify_rtt_seconds", "round-trip time of answered qualify probes",
               core.qualify.rtt)
    _histogram(out, "sipconsole_group_commit_size", "changes (requests) written by one group commit",
               location.commit_size)
    _histogram(out, "sipconsole_group_commit_seconds", "time one group commit took to become durable",
               location.commit_seconds)
    one("sipconsole_storage_errors_total", "counter", "writes the location store refused or failed",
        location.storage_errors)
    one("sipconsole_storage_ok", "gauge", "1 while the location store accepts writes, 0 while it fails",
        0 if s["storage_error"] else 1)
    one("sipconsole_reg_subscriptions", "gauge", "reg event subscriptions (SUBSCRIBE Event: reg) live now",
        s["reg_subscriptions"])
    metric("sipconsole_reg_notifies_total", "counter", "reg event NOTIFYs by outcome (failed: an error answer or none)",
           by("result", {"sent": s["reg_notify_sent"], "failed": s["reg_notify_failed"]}))
    one("sipconsole_reg_subscriptions_dropped_total", "counter",
        "reg event watchers dropped because a NOTIFY failed", s["reg_subscriptions_dropped"])
    one("sipconsole_events_dropped_total", "counter",
        "events lost by subscribers (console, ctl) that fell behind", core.events.dropped)
    one("sipconsole_uptime_seconds", "gauge", "seconds since the registrar started", s["uptime"])
    out.append("")
    return "\n".join(out)


def _histogram(out: list[str], name: str, help_text: str, histogram: Histogram) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} histogram")
    total = 0
    for bound, count in zip((*histogram.bounds, math.inf), histogram.counts):
        total += count
        out.append(f'{name}_bucket{{le="{_number(bound)}"}} {total}')
    out.append(f"{name}_sum {_number(histogram.sum)}")
    out.append(f"{name}_count {total}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{_escape(str(value))}"' for key, value in labels.items()) + "}"


def _escape(value: str) -> str:
    """A label value as the format quotes it: backslash, double quote and newline escaped."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if value == math.inf:
        return "+Inf"
    if isinstance(value, int) or float(value).is_integer():
        return str(int(value))
    return repr(float(value))
