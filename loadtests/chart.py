"""The capacity ladder's picture: a hand-written SVG drawn from a ladder's summary.json.

    python -m loadtests.chart out/ladder-<time>/summary.json   # (re)draws capacity.svg beside it

Two panels share the steps as their x axis: location updates per second achieved against the
target, and the push p99 on a log scale with the `--max-p99-ms` limit as a line. The knee is
marked: the highest step of the unbroken run of held steps from the bottom, and the first step
that did not hold.
"""

from __future__ import annotations

import json
import math
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from html import escape
from pathlib import Path
from typing import Any

from loadtests.report import StepResult, highest_held, steps_from_json

WIDTH, LEFT, RIGHT = 880, 78, 24
PANEL_H = 170
ACHIEVED, TARGET, P99, LIMIT = "#1f77b4", "#8c8c8c", "#ff7f0e", "#d62728"
HELD, MISSED = "#2ca02c", "#d62728"
# A white outline behind a label keeps it readable where a line of the plot crosses it.
HALO = ' stroke="white" stroke-width="3" paint-order="stroke"'


def _text(x: float, y: float, body: str, size: float = 11, anchor: str = "start",
          extra: str = "") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size:g}" text-anchor="{anchor}"'
            f'{extra}>{escape(body)}</text>')


def _nice_step(raw: float) -> float:
    power = 10.0 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 5, 10) if m * power >= raw)


def _log_range(values: Sequence[float]) -> tuple[float, float]:
    # Some headroom past the extremes, so that neither a point nor the limit sits on an edge.
    lo = 10.0 ** math.floor(math.log10(min(values) / 1.5))
    hi = 10.0 ** math.ceil(math.log10(max(values) * 1.5))
    return lo, hi


def _log_ticks(lo: float, hi: float) -> list[tuple[float, bool]]:
    """(value, labelled) at 1-2-5 of each decade; past three decades only the 1s are labelled."""
    decades = round(math.log10(hi / lo))
    ticks = []
    for k in range(round(math.log10(lo)), round(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0**k
            if lo * 0.999 <= v <= hi * 1.001:
                ticks.append((float(f"{v:.6g}"), m == 1 or decades <= 3))
    return ticks


def _legend(x0: float, y: float) -> tuple[list[str], float]:
    """The legend's elements from (x0, y), wrapped to the width; and the y under it."""
    items = [
        (f'stroke="{ACHIEVED}" stroke-width="2"', "updates/s achieved"),
        (f'stroke="{TARGET}" stroke-width="2" stroke-dasharray="5 3"', "updates/s target"),
        (f'stroke="{P99}" stroke-width="2"', "push p99 latency"),
        (f'stroke="{LIMIT}" stroke-width="1.5" stroke-dasharray="8 4"', "p99 limit"),
        (f'stroke="{HELD}" stroke-width="2"', "highest held step"),
        (f'stroke="{MISSED}" stroke-width="2" stroke-dasharray="3 3"', "first step missed"),
    ]
    parts = ['<g class="legend">']
    x = x0
    for style, label in items:
        width = 27 + 5.6 * len(label)
        if x + width > WIDTH - RIGHT:
            x, y = x0, y + 18
        parts.append(f'<line x1="{x:.1f}" y1="{y - 4:.1f}" x2="{x + 22:.1f}" y2="{y - 4:.1f}" '
                     f"{style}/>")
        parts.append(_text(x + 27, y, label))
        x += width + 16
    parts.append("</g>")
    return parts, y + 18


def _params_line(summary: Mapping[str, Any], results: Sequence[StepResult]) -> str:
    params: Mapping[str, Any] = summary.get("params") or {}
    parts = []
    intervals = {r.spec.interval_s for r in results}
    if len(intervals) == 1:
        parts.append(f"each rider reports every {intervals.pop():g} s")
    ratios = {r.spec.watchers / r.spec.riders for r in results}
    if len(ratios) == 1:
        parts.append(f"{ratios.pop():g} watcher(s) per rider")
    if "step_s" in params:
        parts.append(f"{params['step_s']:g} s measured per step after a "
                     f"{params.get('spawn_s', 0):g} s ramp")
    parts.append(f"push p99 limit {summary['max_p99_ms']:g} ms")
    if params.get("host"):
        parts.append(f"server {params['host']}")
    elif "workers" in params:
        parts.append(f"own tracking serve, {params['workers']} API process(es)")
    if summary.get("cpus"):
        parts.append(f"{summary['cpus']} CPUs")
    if params.get("started_at"):
        parts.append(f"started {params['started_at']}")
    return "; ".join(parts)


def _verdict(results: Sequence[StepResult], max_p99_ms: float) -> tuple[str, str]:
    best = highest_held(results, max_p99_ms)
    limit = f"push p99 < {max_p99_ms:g} ms"
    if not results:
        return "No step ran: nothing to judge.", MISSED
    if best is None:
        first = results[0]
        return (f"No step held at {limit}: the first step ({first.spec.riders} riders) missed "
                f"({first.why_not(max_p99_ms)}).", MISSED)
    held = f"{best.spec.riders} riders ({best.updates_per_s:.1f} updates/s)"
    i = results.index(best)
    if i + 1 == len(results):
        return (f"Every step held at {limit}, up to {held}: the knee is higher; "
                "add steps above it.", HELD)
    miss = results[i + 1]
    return (f"Held at {limit} up to {held}; {miss.spec.riders} riders missed "
            f"({miss.why_not(max_p99_ms)}).", HELD)


def _tooltip(n: int, r: StepResult, max_p99_ms: float) -> str:
    held = "held" if r.held(max_p99_ms) else f"missed: {r.why_not(max_p99_ms)}"
    return escape(
        f"step {n}: {r.spec.label()}; {r.updates_per_s:.1f} updates/s "
        f"(target {r.target_updates_per_s:.1f}); push p50/p99 {r.push_p50_ms}/{r.push_p99_ms} ms; "
        f"{r.failures} failures; host load {r.host_load_1m}; {held}")


def render_svg(summary: Mapping[str, Any]) -> str:
    """The SVG text of a ladder's summary (the document the ladder writes as summary.json)."""
    results = steps_from_json(summary)
    max_p99 = float(summary["max_p99_ms"])
    verdict, verdict_color = _verdict(results, max_p99)
    command = textwrap.wrap(str(summary.get("command", "")), 128, break_on_hyphens=False)
    params = textwrap.wrap(_params_line(summary, results), 125)
    legend, below_legend = _legend(LEFT, 68 + 16 * len(params))
    top1 = below_legend + 26
    bottom1 = top1 + PANEL_H
    top2 = bottom1 + 34
    bottom2 = top2 + PANEL_H
    height = bottom2 + 84 + 13 * len(command)
    plot_w = WIDTH - LEFT - RIGHT
    n = max(1, len(results))

    def x_of(i: int) -> float:
        return LEFT + plot_w * (i + 0.5) / n

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        f'viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" role="img">',
        f'<rect width="{WIDTH}" height="{height}" fill="white"/>',
        _text(LEFT, 24, "Capacity ladder: location updates/s and push p99 latency per step",
              16, extra=' font-weight="bold"'),
        *(_text(LEFT, 44 + 16 * k, line, 11.5) for k, line in enumerate(params)),
        _text(LEFT, 48 + 16 * len(params), verdict, 12.5,
              extra=f' font-weight="bold" fill="{verdict_color}" class="verdict"'),
        *legend,
    ]
    # Panel 1: updates/s, linear from zero.
    top_v = max([1.0, *(r.target_updates_per_s for r in results),
                 *(r.updates_per_s for r in results)])
    step_v = _nice_step(top_v / 5)
    top_v = math.ceil(top_v * 1.05 / step_v) * step_v

    def y1(v: float) -> float:
        return bottom1 - v / top_v * PANEL_H

    for k in range(round(top_v / step_v) + 1):
        v = k * step_v
        parts.append(f'<line x1="{LEFT}" y1="{y1(v):.1f}" x2="{WIDTH - RIGHT}" y2="{y1(v):.1f}" '
                     'stroke="#e6e6e6"/>')
        parts.append(_text(LEFT - 6, y1(v) + 4, f"{v:g}", 10, "end"))
    parts.append(_text(18, (top1 + bottom1) / 2, "updates/s", 11, "middle",
                       f' transform="rotate(-90 18 {(top1 + bottom1) / 2:.1f})"'))
    # Panel 2: push p99, log scale so that the limit and a collapsed step both stay readable.
    p99s = [r.push_p99_ms for r in results]
    lo, hi = _log_range([max_p99, *(p for p in p99s if p is not None and p > 0)])

    def y2(v: float) -> float:
        v = min(max(v, lo), hi)
        return bottom2 - math.log10(v / lo) / math.log10(hi / lo) * PANEL_H

    for v, labelled in _log_ticks(lo, hi):
        parts.append(f'<line x1="{LEFT}" y1="{y2(v):.1f}" x2="{WIDTH - RIGHT}" y2="{y2(v):.1f}" '
                     f'stroke="{"#e0e0e0" if labelled else "#f2f2f2"}"/>')
        if labelled:
            parts.append(_text(LEFT - 6, y2(v) + 4, f"{v:g}", 10, "end"))
    parts.append(_text(18, (top2 + bottom2) / 2, "push p99, ms", 11, "middle",
                       f' transform="rotate(-90 18 {(top2 + bottom2) / 2:.1f})"'))
    parts.append(f'<line class="limit" x1="{LEFT}" y1="{y2(max_p99):.1f}" x2="{WIDTH - RIGHT}" '
                 f'y2="{y2(max_p99):.1f}" stroke="{LIMIT}" stroke-width="1.5" '
                 'stroke-dasharray="8 4"/>')
    parts.append(_text(WIDTH - RIGHT - 4, y2(max_p99) - 5, f"limit {max_p99:g} ms", 10.5, "end",
                       f' fill="{LIMIT}"' + HALO))
    for top, bottom in ((top1, bottom1), (top2, bottom2)):
        parts.append(f'<rect x="{LEFT}" y="{top}" width="{plot_w}" height="{bottom - top}" '
                     'fill="none" stroke="#999"/>')
    parts += _knee(results, max_p99, x_of, top1, bottom2)
    parts += _series(results, x_of, y1, y2, max_p99)
    parts.append(_text(LEFT + 4, top1 + 13, "location updates per second (all riders)", 11,
                       extra=' fill="#555"' + HALO))
    parts.append(_text(LEFT + 4, top2 + 13, "push p99: location update to watcher (log scale)",
                       11, extra=' fill="#555"' + HALO))
    # The steps under the lower panel, as a small table: riders, watchers, held.
    for label, dy in (("riders", 16), ("watchers", 30), ("held", 44)):
        parts.append(_text(LEFT - 6, bottom2 + dy, label, 10.5, "end", ' fill="#555"'))
    for i, r in enumerate(results):
        ok = r.held(max_p99)
        parts.append(_text(x_of(i), bottom2 + 16, str(r.spec.riders), 10.5, "middle"))
        parts.append(_text(x_of(i), bottom2 + 30, str(r.spec.watchers), 10.5, "middle"))
        parts.append(_text(x_of(i), bottom2 + 44, "yes" if ok else "no", 10.5, "middle",
                           f' fill="{HELD if ok else MISSED}"'))
    parts.append(_text(LEFT + plot_w / 2, bottom2 + 62, "ladder step (users per step)", 11,
                       "middle"))
    for k, line in enumerate(command):
        parts.append(_text(LEFT, bottom2 + 80 + 13 * k, line, 10,
                           extra=' font-family="monospace" fill="#555"'))
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


Scale = Callable[[float], float]


def _knee(results: Sequence[StepResult], max_p99: float, x_of: Callable[[int], float],
          top: float, bottom: float) -> list[str]:
    best = highest_held(results, max_p99)
    held_i = -1 if best is None else results.index(best)
    parts = []
    if held_i >= 0:
        x = x_of(held_i)
        parts.append(f'<line class="knee-held" data-step="{held_i + 1}" x1="{x:.1f}" '
                     f'y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="{HELD}" '
                     'stroke-width="2" opacity="0.8"/>')
        parts.append(_text(x - 4, top - 10, f"highest held: {results[held_i].spec.riders} riders",
                           10.5, "end", f' fill="{HELD}"' + HALO))
    if held_i + 1 < len(results):
        x = x_of(held_i + 1)
        parts.append(f'<line class="knee-missed" data-step="{held_i + 2}" x1="{x:.1f}" '
                     f'y1="{top - 6}" x2="{x:.1f}" y2="{bottom}" stroke="{MISSED}" '
                     'stroke-width="2" stroke-dasharray="3 3" opacity="0.8"/>')
        label = ("nothing held; " if held_i < 0 else "") + \
            f"first miss: {results[held_i + 1].spec.riders} riders"
        parts.append(_text(x + 4, top - 10, label, 10.5, extra=f' fill="{MISSED}"' + HALO))
    return parts


def _series(results: Sequence[StepResult], x_of: Callable[[int], float], y1: Scale, y2: Scale,
            max_p99: float) -> list[str]:
    parts = []
    target = " ".join(f"{x_of(i):.1f},{y1(r.target_updates_per_s):.1f}"
                      for i, r in enumerate(results))
    achieved = " ".join(f"{x_of(i):.1f},{y1(r.updates_per_s):.1f}"
                        for i, r in enumerate(results))
    p99 = " ".join(f"{x_of(i):.1f},{y2(r.push_p99_ms):.1f}"
                   for i, r in enumerate(results) if r.push_p99_ms is not None)
    parts.append(f'<polyline fill="none" stroke="{TARGET}" stroke-width="2" '
                 f'stroke-dasharray="5 3" points="{target}"/>')
    parts.append(f'<polyline fill="none" stroke="{ACHIEVED}" stroke-width="2" '
                 f'points="{achieved}"/>')
    parts.append(f'<polyline fill="none" stroke="{P99}" stroke-width="2" points="{p99}"/>')
    for i, r in enumerate(results):
        tip = f"<title>{_tooltip(i + 1, r, max_p99)}</title>"
        x = x_of(i)
        parts.append(f'<circle class="target" data-step="{i + 1}" cx="{x:.1f}" '
                     f'cy="{y1(r.target_updates_per_s):.1f}" r="3.5" fill="white" '
                     f'stroke="{TARGET}" stroke-width="1.5">{tip}</circle>')
        parts.append(f'<circle class="updates" data-step="{i + 1}" cx="{x:.1f}" '
                     f'cy="{y1(r.updates_per_s):.1f}" r="4" fill="{ACHIEVED}">{tip}</circle>')
        if r.push_p99_ms is None:
            parts.append(f'<g class="p99 no-push" data-step="{i + 1}">{tip}'
                         + _text(x, y2(0) - 6, "no push", 10, "middle", f' fill="{MISSED}"' + HALO)
                         + "</g>")
        else:
            parts.append(f'<circle class="p99" data-step="{i + 1}" cx="{x:.1f}" '
                         f'cy="{y2(r.push_p99_ms):.1f}" r="4" fill="{P99}">{tip}</circle>')
            parts.append(_text(x + 6, y2(r.push_p99_ms) - 6, f"{r.push_p99_ms:g}", 10,
                               extra=f' fill="{P99}" font-weight="bold"' + HALO))
    return parts


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m loadtests.chart SUMMARY_JSON  (writes capacity.svg beside it)",
              file=sys.stderr)
        return 2
    source = Path(args[0])
    target = source.with_name("capacity.svg")
    target.write_text(render_svg(json.loads(source.read_text())))
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
