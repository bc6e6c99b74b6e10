"""A contact's reachability over time, in its detail view: the RTTs of its last qualify
probes as a sparkline, a summary line, and a mark that cannot be missed when it is flapping
(``qualify-flap-changes`` state changes within ``qualify-flap-window``)."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from ..format import clock_time, duration


def summary(status: dict[str, Any], history: dict[str, Any] | None) -> Text:
    """``reachable · RTT 12.3 ms (min/avg/max ...) · 2 of 32 unanswered · 5 state changes ...``."""
    state = status.get("state", "unknown")
    tone = {"reachable": "green", "unreachable": "bold red"}.get(state, "dim")
    text = Text.assemble((state, tone))
    rtts = (history or {}).get("rtts") or []
    if not rtts:
        return text.append("  · not probed yet (qualify-interval 0 or no probe so far)", style="dim")
    answered = [v for v in rtts if v is not None]
    if answered:
        text.append(f"  · RTT {answered[-1]:.1f} ms (min/avg/max {min(answered):.1f}/"
                    f"{sum(answered) / len(answered):.1f}/{max(answered):.1f})")
    text.append(f"  · {len(rtts) - len(answered)} of the last {len(rtts)} probes unanswered")
    changes = (history or {}).get("changes") or []
    if changes:
        when, became = changes[-1]
        text.append(f"  · {len(changes)} state changes, last {became} at {clock_time(when)}")
    return text


def flapping_mark(history: dict[str, Any] | None) -> Text:
    if not history or not history.get("flapping"):
        return Text("")
    return Text(f" FLAPPING: {history['flap_changes']} or more reachable/unreachable changes within "
                f"{duration(history['flap_window'])} ", style="bold white on red")


class ReachabilityPanel(Vertical):
    """Filled by :meth:`show` with a ``show`` reply's contact (its ``history``)."""

    def compose(self) -> ComposeResult:
        yield Static(id="reach-flapping")
        yield Static(id="reach-summary")
        yield Sparkline([], id="rtt-spark", summary_function=max)

    def on_mount(self) -> None:
        self.border_title = "Reachability (qualify OPTIONS, the last probes' RTT, oldest first)"

    def show(self, status: dict[str, Any], history: dict[str, Any] | None) -> None:
        self.query_one("#reach-flapping", Static).update(flapping_mark(history))
        self.query_one("#reach-flapping", Static).display = bool(history and history.get("flapping"))
        self.query_one("#reach-summary", Static).update(summary(status, history))
        spark = self.query_one("#rtt-spark", Sparkline)
        spark.data = [v for v in (history or {}).get("rtts") or () if v is not None]
        spark.display = bool(spark.data)
