"""The status page `/`: what an operator keeps open during a migration, as one HTML page.

Server-rendered, with inline CSS and SVG only (no script, nothing fetched), refreshed every
5 s. Aggregates only (no account ids or addresses), so it can be shown on a wall screen. It
reads what the projection keeps up to date (counts per state, per wave, per flag, the funnel's
history) and two single-row queries on the log (its head and its last checkpoint), so a page
costs the same with a thousand accounts as with a million.
"""

from __future__ import annotations

import copy
import dataclasses
import html
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from daemon import __version__
from daemon.domain import STATES, KnownIpList
from daemon.http.context import Runtime
from daemon.runtime.projections import FunnelHistory, WaveProgress
from eventstore import EventStoreError, SignedCheckpoint

NEXT_HOUR = timedelta(hours=1)

# One colour per state, and the order the chart stacks them in (bottom first): arrived at the
# bottom, the migration's steps above it, not yet started on top.
COLOURS: dict[str, str] = {
    "static": "#2f9e66",
    "second_auth": "#7c5cc4",
    "second_step_due": "#e8a33d",
    "stopped_waiting": "#3d85c6",
    "first_auth": "#86b9e8",
    "stalled": "#d2504b",
    "excluded": "#8d8d8d",
    "dynamic": "#c9d1d9",
}
STACK = tuple(COLOURS)
assert set(STACK) == set(STATES), "every state has a colour"

LABELS: dict[str, str] = {
    "dynamic": "not started (dynamic)",
    "first_auth": "first auth",
    "stopped_waiting": "stopped, waiting",
    "second_step_due": "second step due",
    "second_auth": "second auth",
    "static": "static",
    "stalled": "stalled",
    "excluded": "excluded",
}


@dataclass(frozen=True)
class StatusView:
    """Everything the page shows, gathered once per request."""

    now: datetime
    migration_enabled: bool
    enabled_at: datetime | None
    sandbox: bool
    time_scale: float
    funnel: dict[str, int]
    history: FunnelHistory
    waves: dict[str, WaveProgress]
    flags: dict[str, int]
    timers: dict[str, int]
    second_steps_next_hour: tuple[int, bool]
    effects_retrying: int
    ip_lists: dict[str, KnownIpList]
    position: int
    head: tuple[int, str] | None
    checkpoint: SignedCheckpoint | None
    role: str = "leader"  # "standby": another process leads the PostgreSQL log


async def gather(rt: Runtime, now: datetime | None = None) -> StatusView:
    """What the page shows now: the projection's aggregates and the log's head."""
    now = now or datetime.now(UTC)
    projection = rt.live.projection
    app = projection.application
    # The projection's part first: the log's head, read after, is never behind it.
    view = StatusView(
        now=now,
        migration_enabled=app.migration_enabled,
        enabled_at=app.enabled_at,
        sandbox=rt.config.provider.sandbox,
        time_scale=rt.config.provider.time_scale,
        funnel=projection.funnel(),
        history=copy.deepcopy(projection.history),
        waves=projection.wave_progress(),
        flags=projection.flag_counts(),
        timers=projection.timer_counts(),
        second_steps_next_hour=projection.due_within("second_step", now + NEXT_HOUR),
        effects_retrying=projection.effects_retrying,
        ip_lists=dict(app.ip_lists),
        position=projection.position,
        head=None,
        checkpoint=None,
        role=rt.role,
    )
    try:
        head = await rt.store.head()
        checkpoint = await rt.store.last_checkpoint()
    except EventStoreError:  # the page still shows the rest; the log's part reads unavailable
        return view
    return dataclasses.replace(view, head=head, checkpoint=checkpoint)


def render(view: StatusView) -> str:
    """The page as HTML."""
    e = html.escape
    banner = ""
    if view.sandbox:
        scale = ""
        if view.time_scale != 1:
            scale = (
                f" · time runs ×{view.time_scale:g} (1 s here is "
                f"{_duration(view.time_scale)} of provider time)"
            )
        banner = (
            '<div class="sandbox" id="sandbox">SANDBOX PROVIDER — not the real provider'
            f"{e(scale)}</div>"
        )
    enabled = (
        f"enabled {_time(view.enabled_at)}"
        if view.migration_enabled and view.enabled_at
        else "enabled"
        if view.migration_enabled
        else "not enabled"
    )
    total = sum(view.funnel.values())
    tiles = "".join(
        f'<div class="tile" data-state="{s}"><i style="background:{COLOURS[s]}"></i>'
        f"<b>{view.funnel[s]:,}</b><span>{e(LABELS[s])}</span></div>"
        for s in STATES
    )
    return _PAGE.format(
        banner=banner,
        enabled=e(enabled),
        total=f"{total:,}",
        waves_n=len(view.waves),
        tiles=tiles,
        chart=funnel_chart(view.history, view.time_scale if view.sandbox else 1.0),
        legend=_legend(view.funnel),
        waves=_waves_table(view),
        next=_next(view),
        ip_lists=_ip_lists(view),
        log=_log(view),
        version=e(__version__),
        now=_time(view.now),
    )


# --- the funnel chart ---------------------------------------------------------------------

_W, _H = 1160, 300
_LEFT, _RIGHT, _TOP, _BOTTOM = 64, 20, 14, 44


def funnel_chart(history: FunnelHistory, time_scale: float = 1.0) -> str:
    """The funnel over time as an inline SVG stacked area chart, with its axes."""
    times, counts = history.times(), history.counts
    if history.start is None or not counts:
        return (
            f'<svg class="chart" viewBox="0 0 {_W} 80" role="img" aria-label="funnel over time">'
            f'<text x="{_W / 2}" y="44" text-anchor="middle" class="axis">'
            "no account enrolled yet</text></svg>"
        )
    index = {s: i for i, s in enumerate(history.states)}
    # A point at the history's start with the first sample, then one at each bucket's end.
    xs_time = [history.start, *times]
    samples = [counts[0], *counts]
    span = max((xs_time[-1] - xs_time[0]).total_seconds(), 1.0)
    top = max(max(sum(c) for c in samples), 1)
    step = _nice_step(top)
    y_max = step * math.ceil(top / step)
    plot_w, plot_h = _W - _LEFT - _RIGHT, _H - _TOP - _BOTTOM

    def x(t: datetime) -> float:
        return _LEFT + plot_w * (t - xs_time[0]).total_seconds() / span

    def y(v: float) -> float:
        return _TOP + plot_h * (1 - v / y_max)

    parts = [
        f'<svg class="chart" viewBox="0 0 {_W} {_H}" role="img" '
        'aria-label="accounts per state over time">'
    ]
    for k in range(int(y_max / step) + 1):
        v = k * step
        parts.append(
            f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{y(v):.1f}" y2="{y(v):.1f}" class="grid"/>'
            f'<text x="{_LEFT - 8}" y="{y(v) + 4:.1f}" text-anchor="end" class="axis">{v:,}</text>'
        )
    below = [0] * len(samples)
    for state in STACK:
        i = index.get(state)
        if i is None:
            continue
        above = [b + (c[i] if i < len(c) else 0) for b, c in zip(below, samples, strict=True)]
        if any(a != b for a, b in zip(above, below, strict=True)):
            upper = " L".join(f"{x(t):.1f},{y(v):.1f}" for t, v in zip(xs_time, above, strict=True))
            lower = " L".join(
                f"{x(t):.1f},{y(v):.1f}"
                for t, v in reversed(list(zip(xs_time, below, strict=True)))
            )
            parts.append(
                f'<path class="area" data-state="{state}" fill="{COLOURS[state]}" '
                f'd="M{upper} L{lower} Z"><title>{html.escape(LABELS[state])}</title></path>'
            )
        below = above
    every = next((t for t in _TIME_STEPS if span / t <= 7), _TIME_STEPS[-1])
    first = math.ceil(xs_time[0].timestamp() / every) * every
    tick = first
    while tick <= xs_time[-1].timestamp():
        t = datetime.fromtimestamp(tick, UTC)
        parts.append(
            f'<line x1="{x(t):.1f}" x2="{x(t):.1f}" y1="{_H - _BOTTOM}" y2="{_H - _BOTTOM + 5}" '
            f'class="tick"/><text x="{x(t):.1f}" y="{_H - _BOTTOM + 18}" '
            f'text-anchor="middle" class="axis">{_tick_label(t, every)}</text>'
        )
        tick += every
    parts.append(
        f'<line x1="{_LEFT}" x2="{_W - _RIGHT}" y1="{_H - _BOTTOM}" y2="{_H - _BOTTOM}" '
        'class="baseline"/>'
    )
    width = _duration(history.bucket_seconds)
    scaled = f"; sandbox time runs ×{time_scale:g}" if time_scale != 1 else ""
    parts.append(
        f'<text x="{_LEFT + plot_w / 2}" y="{_H - 6}" text-anchor="middle" class="label">'
        f"time (UTC, as the log's events say; one sample every {width}{scaled})</text>"
        f'<text transform="translate(16 {_TOP + plot_h / 2}) rotate(-90)" '
        'text-anchor="middle" class="label">accounts</text></svg>'
    )
    return "".join(parts)


def _nice_step(top: int) -> int:
    """A step of 1, 2 or 5 times a power of ten giving at most 5 gridlines up to `top`."""
    magnitude = 10 ** max(int(math.log10(max(top / 5, 1))), 0)
    for factor in (1, 2, 5, 10):
        if top / (factor * magnitude) <= 5:
            return factor * magnitude
    return 10 * magnitude


# Steps between the time axis' ticks (seconds): the first giving at most 7 ticks is used.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600,
               43200, 86400, 172800, 604800, 2592000)  # fmt: skip


def _tick_label(t: datetime, every: int) -> str:
    if every < 60:
        return t.strftime("%H:%M:%S")
    if every < 86400:
        return t.strftime("%H:%M") if t.hour or t.minute else t.strftime("%b %d")
    return t.strftime("%b %d")


def _legend(funnel: dict[str, int]) -> str:
    items = "".join(
        f'<li><i style="background:{COLOURS[s]}"></i>{html.escape(LABELS[s])} '
        f"<b>{funnel.get(s, 0):,}</b></li>"
        for s in reversed(STACK)
    )
    return f'<ul class="legend">{items}</ul>'


# --- the tables ---------------------------------------------------------------------------


def _waves_table(view: StatusView) -> str:
    if not view.waves:
        return '<p class="muted">No wave enrolled yet.</p>'
    rows = []
    for wave, p in view.waves.items():
        n = p.enrolled or 1
        bar = "".join(
            f'<i style="width:{100 * p.states[s] / n:.2f}%;background:{COLOURS[s]}"></i>'
            for s in STACK
            if p.states[s]
        )
        rows.append(
            f"<tr><th>{html.escape(wave)}</th><td>{p.enrolled:,}</td>"
            f"<td>{p.states['dynamic']:,}</td><td>{p.waiting:,}</td>"
            f"<td class='ok'>{p.states['static']:,}</td>"
            f"<td class='{'bad' if p.states['stalled'] else ''}'>{p.states['stalled']:,}</td>"
            f"<td>{p.states['excluded']:,}</td>"
            f'<td class="barcell"><div class="bar">{bar}</div></td>'
            f"<td>{_took(p.static_seconds_median, view)}</td>"
            f"<td>{_took(p.static_seconds_p90, view)}</td></tr>"
        )
    return (
        '<table class="waves" id="waves"><thead><tr><th>wave</th><th>enrolled</th>'
        "<th>not started</th><th>waiting</th><th>static</th><th>stalled</th><th>excluded</th>"
        "<th>progress</th><th>first auth → static:<br>median</th><th><br>90th percentile</th>"
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _took(seconds: float | None, view: StatusView) -> str:
    if seconds is None:
        return '<span class="muted">—</span>'
    text = _duration(seconds)
    if view.sandbox and view.time_scale != 1:
        text += f" <small>(≈ {_duration(seconds * view.time_scale)} provider time)</small>"
    return text


def _next(view: StatusView) -> str:
    due, more = view.second_steps_next_hour
    flagged = ", ".join(
        f"{html.escape(f.replace('_', ' '))} {n:,}" for f, n in view.flags.items() if n
    )
    items = [
        ("second steps due in the next hour", f"{due:,}{'+' if more else ''}", ""),
        ("reminders pending", f"{view.timers.get('reminder', 0):,}", ""),
        ("effects failing, being retried", f"{view.effects_retrying:,}",
         "warn" if view.effects_retrying else ""),
        ("effects given up", f"{view.flags.get('effect_gave_up', 0):,}",
         "bad" if view.flags.get("effect_gave_up") else ""),
    ]  # fmt: skip
    tiles = "".join(
        f'<div class="tile next {cls}"><b>{value}</b><span>{label}</span></div>'
        for label, value, cls in items
    )
    return f'<div class="tiles">{tiles}</div><p>Flagged accounts: {flagged or "none"}</p>'


def _ip_lists(view: StatusView) -> str:
    if not view.ip_lists:
        return '<p class="muted">No IP list fetched from the provider yet.</p>'
    rows = []
    for kind, known in sorted(view.ip_lists.items()):
        shown = ", ".join(known.addresses[:6])
        more = len(known.addresses) - 6
        if more > 0:
            shown += f" and {more} more"
        provider = _time(known.provider_updated_at) if known.provider_updated_at else "—"
        rows.append(
            f"<tr><th>{html.escape(kind)}</th><td>{len(known.addresses)}</td>"
            f'<td class="mono">{html.escape(shown) or "—"}</td>'
            f'<td class="nowrap">{_time(known.changed_at)}</td>'
            f'<td class="nowrap">{provider}</td></tr>'
        )
    return (
        '<table id="ip-lists"><thead><tr><th>list</th><th>addresses</th><th></th>'
        "<th>last change seen</th><th>provider's updated_at</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>"
    )


def _log(view: StatusView) -> str:
    if view.head is None:
        head = '<span class="bad">the log is unavailable</span>'
    else:
        position, digest = view.head
        head = f'position <b>{position:,}</b> · hash <span class="mono hash">{digest}</span>'
    if view.checkpoint is None:
        checkpoint = "none yet"
    else:
        c = view.checkpoint
        behind = f" · {view.head[0] - c.position:,} events since" if view.head else ""
        checkpoint = (
            f"position <b>{c.position:,}</b> at {_time(c.created_at)} · key "
            f'<span class="mono">{html.escape(c.key_id)}</span>{behind}'
        )
    return (
        f'<table id="log"><tr><th>head</th><td>{head}</td></tr>'
        f"<tr><th>last signed checkpoint</th><td>{checkpoint}</td></tr>"
        f"<tr><th>projection</th><td>at position {view.position:,}</td></tr>"
        f"<tr><th>this instance</th><td>{html.escape(view.role)}</td></tr></table>"
    )


def _time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    """A duration as people read it: 42 s, 3.5 min, 2.1 h, 3.2 days."""
    if seconds < 60:
        return f"{seconds:.3g} s"
    if seconds < 3600:
        return f"{seconds / 60:.3g} min"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.3g} h"
    return f"{seconds / 86400:.3g} days"


_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta http-equiv="refresh" content="5"><meta name="viewport" content="width=device-width">
<title>staticipd status</title>
<style>
body{{font:15px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;background:#f4f6f8;
color:#1f2933}}
main{{max-width:1200px;margin:0 auto;padding:18px 20px 28px}}
header{{display:flex;align-items:baseline;gap:18px;flex-wrap:wrap}}
h1{{font-size:26px;margin:0}}h2{{font-size:17px;margin:0 0 10px}}
.sandbox{{background:repeating-linear-gradient(135deg,#f59f00 0 18px,#f7b32b 18px 36px);
color:#111;font-weight:700;text-align:center;padding:9px;letter-spacing:.02em;font-size:16px}}
section{{background:#fff;border:1px solid #dde3ea;border-radius:8px;padding:14px 16px;
margin-top:14px}}
.tiles{{display:grid;grid-template-columns:repeat(auto-fit,minmax(130px,1fr));gap:10px}}
.tile{{border:1px solid #e3e8ee;border-radius:6px;padding:8px 10px;position:relative}}
.tile b{{display:block;font-size:24px;font-variant-numeric:tabular-nums}}
.tile span{{color:#52606d;font-size:13px}}
.tile i{{position:absolute;top:10px;right:10px;width:12px;height:12px;border-radius:3px}}
.tile.warn b{{color:#b7791f}}.tile.bad b,.bad{{color:#c53030}}.ok{{color:#2f855a}}
.chart{{width:100%;height:auto;display:block}}
.grid{{stroke:#e6eaef}}.baseline,.tick{{stroke:#7b8794}}
.axis{{font-size:12px;fill:#52606d}}.label{{font-size:13px;fill:#323f4b}}
.area{{stroke:#fff;stroke-width:.6}}
.legend{{list-style:none;display:flex;flex-wrap:wrap;gap:6px 18px;padding:0;margin:8px 0 0}}
.legend i{{display:inline-block;width:12px;height:12px;border-radius:3px;margin-right:6px;
vertical-align:-1px}}
table{{border-collapse:collapse;width:100%}}
th,td{{text-align:left;padding:6px 10px;border-bottom:1px solid #edf0f3;vertical-align:top}}
thead th{{font-weight:600;color:#52606d;font-size:13px;vertical-align:bottom}}
tbody th,#log th{{font-weight:600}}
.waves td{{font-variant-numeric:tabular-nums}}
.barcell{{width:26%}}.bar{{display:flex;height:14px;border-radius:3px;overflow:hidden;
background:#edf0f3;margin-top:4px}}.bar i{{display:block;height:100%}}
.mono{{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:13px}}
.hash{{word-break:break-all}}
.muted,small,footer{{color:#7b8794}}footer{{margin-top:14px;font-size:13px}}
.nowrap,tbody th{{white-space:nowrap}}#log th{{width:13em}}
</style></head><body>{banner}<main>
<header><h1>staticipd</h1><span>Migration <b>{enabled}</b></span>
<span><b>{total}</b> accounts in <b>{waves_n}</b> wave(s)</span></header>
<section><h2>Accounts per state</h2><div class="tiles">{tiles}</div></section>
<section id="funnel"><h2>Funnel over time</h2>{chart}{legend}</section>
<section><h2>Waves</h2>{waves}</section>
<section id="next"><h2>What comes next</h2>{next}</section>
<section><h2>Provider IP lists</h2>{ip_lists}</section>
<section><h2>Event log</h2>{log}</section>
<footer>staticipd {version} · {now} · refreshes every 5 s · aggregate counts only ·
<a href="/metrics">metrics</a> · <a href="/readyz">readiness</a></footer>
</main></body></html>"""
