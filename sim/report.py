"""The end-of-run report: a JSON document, a text table, and an HTML page with inline SVG plots."""

from __future__ import annotations

import html
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from sim.phone import KINDS
from sim.scenario import RunConfig
from sim.stats import Metrics, summary_ms


def build_report(
    cfg: RunConfig,
    m: Metrics,
    *,
    duration_s: float,
    integrations: dict[str, Any] | None,
    target: dict[str, Any],
    failed: list[str] | None = None,
    faults: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    c = m.counts
    lag = summary_ms(list(m.loop_lag_s))
    return {
        "scenario": cfg.name,
        "description": cfg.description,
        "seed": cfg.seed,
        "target": target,
        "config": _config(cfg),
        "duration_s": round(duration_s, 2),
        "deliveries": {
            "planned": cfg.riders,
            "started": c["deliveries_started"],
            "completed": c["deliveries_completed"],
        },
        "updates": {
            "sent": c["updates_sent"],
            "acknowledged": c["updates_acked"],
            "retried": c["update_retries"],
            "sent_http": c["updates_sent_http"],
            "sent_ws": c["updates_sent_ws"],
            "ack_latency_ms": summary_ms(list(m.ack_s)),
            "ack_latency_ws_ms": summary_ms(list(m.ack_ws_s)),
        },
        "invalid_transitions": {"sent": c["invalid_sent"], "rejected": c["invalid_rejected"]},
        "messages": {
            "expected": c["messages_expected"],
            "received": c["messages_received"],
            "lost": c["messages_lost"],
            "lost_at_tail": c["messages_lost_tail"],
            "conflated": c["messages_conflated"],
            "out_of_order": c["out_of_order"],
            "duplicates": c["duplicates"],
            "status_changes_received": c["status_changes_received"],
        },
        "checks": {
            "status_errors": c["status_errors"],
            "eta_errors": c["eta_errors"],
            "protocol_errors": c["protocol_errors"],
            "phone_leaks": c["phone_leaks"],
        },
        "watchers": {
            "planned": c["watchers_planned"],
            "connected": c["watchers_connected"],
            "peak_open": m.peak_open_sockets(),
            "saw_delivered": c["watchers_saw_delivered"],
            "did_not_see_delivered": c["watchers_not_delivered"],
            "connection_failures": c["connection_failures"],
            "reconnects": c["reconnects"],
            "resumed": c["resumed"],
            "history_caught_up": c["history_caught_up"],
        },
        "quality": _quality(m),
        "latency_ms": {**summary_ms(list(m.latency_s)), "unmatched": c["latency_unmatched"]},
        "client_loop_lag_ms": lag,
        "simulator": {
            "processes": cfg.procs,
            "max_rss_mb": round(c["sim_max_rss_kb"] / 1024, 1),
            "rss_kb_per_peak_socket": (
                round(c["sim_max_rss_kb"] / m.peak_open_sockets(), 1)
                if m.peak_open_sockets()
                else None
            ),
        },
        "errors": dict(sorted(m.errors.items())),
        "accepted": {"checked": c["accepted_checked"], "lost": c["accepted_lost"]},
        "server_faults": {
            "planned": len(cfg.server_faults),
            "done": faults or [],
            "transient_failures": c["transient_failures"],
            "watcher_disconnects": c["outage_disconnects"],
            "watcher_reconnects": c["outage_reconnects"],
            "gaps_bridged_from_history": c["gaps_bridged"],
            "state_resent": c["resync_repeats"],
        },
        "integrations": integrations,
        "violations": m.violations,
        "timeline": m.timeline(),
        "failed_expectations": failed or [],
    }


def _quality(m: Metrics) -> dict[str, Any]:
    """What the phones sent and what the server made of it; milestones and resumes seen."""
    c = m.counts
    phone = {k: c[f"phone_{k}"] for k in KINDS}
    filtered = {k.removeprefix("fixes_filtered_"): n for k, n in sorted(c.items())
                if k.startswith("fixes_filtered_")}  # fmt: skip
    return {
        "phone": phone,
        "noise_sent": phone["jump"] + phone["duplicate"],
        "batch_fixes": c["batch_fixes"],
        "fixes_filtered": c["fixes_filtered"],
        "filtered_by_reason": filtered,
        "noise_kept": c["noise_kept"],
        "messages_replayed": c["messages_replayed"],
        "milestones": {
            "streams": c["milestone_streams"],
            "approached_once": c["approached_once"],
            "arrived_once": c["arrived_once"],
            "flaps": c["flaps"],
        },
    }


def _config(cfg: RunConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d["plan"]["vehicle_mix"] = dict(cfg.plan.vehicle_mix)
    d["server_env"] = dict(cfg.server_env)
    d["expect"] = dict(cfg.expect)
    return d


def figures(r: dict[str, Any]) -> dict[str, float | None]:
    """The flat figures expectations are written against."""
    integ = r.get("integrations") or {}
    orders, notes = integ.get("orders", {}), integ.get("notifications", {})
    problems = None
    if integ:
        problems = integ["bad_calls"] + integ["out_of_order"] + integ["unexpected"]
    return {
        "deliveries_planned": r["deliveries"]["planned"],
        "deliveries_completed": r["deliveries"]["completed"],
        "watchers_planned": r["watchers"]["planned"],
        "watchers_saw_delivered": r["watchers"]["saw_delivered"],
        "messages_lost": r["messages"]["lost"],
        "out_of_order": r["messages"]["out_of_order"],
        "duplicates": r["messages"]["duplicates"],
        **r["checks"],
        "connection_failures": r["watchers"]["connection_failures"],
        "errors": sum(r["errors"].values()),
        "invalid_sent": r["invalid_transitions"]["sent"],
        "invalid_rejected": r["invalid_transitions"]["rejected"],
        "reconnects": r["watchers"]["reconnects"],
        "resumed": r["watchers"]["resumed"],
        "history_caught_up": r["watchers"]["history_caught_up"],
        "noise_sent": r["quality"]["noise_sent"],
        "fixes_filtered": r["quality"]["fixes_filtered"],
        "noise_kept": r["quality"]["noise_kept"],
        "milestone_streams": r["quality"]["milestones"]["streams"],
        "approached_once": r["quality"]["milestones"]["approached_once"],
        "arrived_once": r["quality"]["milestones"]["arrived_once"],
        "flaps": r["quality"]["milestones"]["flaps"],
        "orders_expected": orders.get("expected"),
        "orders_ok": orders.get("ok"),
        "notifications_expected": notes.get("expected"),
        "notifications_ok": notes.get("ok"),
        "integration_problems": problems,
        "latency_p99_ms": r["latency_ms"]["p99"],
        "updates_acknowledged": r["updates"]["acknowledged"],
        "accepted_checked": r["accepted"]["checked"],
        "accepted_lost": r["accepted"]["lost"],
        "faults_planned": r["server_faults"]["planned"],
        "faults_done": len([f for f in r["server_faults"]["done"] if f.get("ok")]),
    }


def _phones(q: dict[str, Any]) -> str:
    sent = ", ".join(f"{n} {k}" for k, n in q["phone"].items() if n)
    dropped = ", ".join(f"{n} {k}" for k, n in q["filtered_by_reason"].items())
    return (f"{sent or 'nothing'} sent ({q['batch_fixes']} fixes in batches); "
            f"filtered {q['fixes_filtered']} ({dropped or 'none'}), {q['noise_kept']} noise kept")


def render_table(r: dict[str, Any]) -> str:
    lat, ack, lag = r["latency_ms"], r["updates"]["ack_latency_ms"], r["client_loop_lag_ms"]
    d, u, msg, w = r["deliveries"], r["updates"], r["messages"], r["watchers"]
    sim = r["simulator"]
    rows = [
        ("scenario", f"{r['scenario']} (seed {r['seed']}) against {r['target'].get('url')}"),
        ("duration", f"{r['duration_s']} s"),
        ("deliveries", f"{d['started']} started / {d['completed']} completed of {d['planned']}"),
        ("updates", f"{u['sent']} sent ({u['sent_http']} http, {u['sent_ws']} ws) / "
                    f"{u['acknowledged']} acknowledged, {u['retried']} retries"),
        ("invalid transitions", "{sent} sent / {rejected} rejected".format(
            **r["invalid_transitions"])),
        ("messages", f"{msg['expected']} expected / {msg['received']} received / "
                     f"{msg['lost']} lost ({msg['lost_at_tail']} at the tail), "
                     f"{msg['conflated']} conflated"),
        ("order", f"{msg['out_of_order']} out of order, {msg['duplicates']} duplicates"),
        ("checks", ", ".join(f"{k} {v}" for k, v in r["checks"].items())),
        ("watchers", f"{w['connected']} connected of {w['planned']}, peak open {w['peak_open']}, "
                     f"{w['connection_failures']} failed, {w['reconnects']} reconnects "
                     f"({w['resumed']} resumed), {w['saw_delivered']} saw DELIVERED"),
        ("phones", _phones(r["quality"])),
        ("milestones", "{streams} streams: {approached_once} saw approaching once, "
                       "{arrived_once} arrived once, {flaps} flaps".format(
                           **r["quality"]["milestones"])),
        ("latency update->watcher", _lat(lat)),
        ("latency update->ack", _lat(ack)),
        ("  of which over ws", _lat(u["ack_latency_ws_ms"])),
        ("client loop lag", _lat(lag)),
        ("simulator memory", "{max_rss_mb} MB peak RSS in {processes} process(es), "
                             "{rss_kb_per_peak_socket} KB per open socket".format(**sim)),
        ("errors", ", ".join(f"{k} {v}" for k, v in r["errors"].items()) or "none"),
        ("accepted", "{checked} acknowledged updates checked in the history, {lost} lost".format(
            **r["accepted"])),
    ]  # fmt: skip
    sf = r["server_faults"]
    for f in sf["done"]:
        rows.append(("server fault", f["what"]))
    if sf["planned"]:
        rows.append((
            "while faulted",
            f"{sf['transient_failures']} updates refused or dropped and retried, "
            f"{sf['watcher_disconnects']} watcher sockets dropped, "
            f"{sf['watcher_reconnects']} came back, {sf['gaps_bridged_from_history']} seqs "
            f"read from history, {sf['state_resent']} current states re-sent",
        ))
    integ = r.get("integrations")
    if integ:
        rows.append((
            "integrations",
            f"orders {integ['orders']['ok']}/{integ['orders']['expected']}, notifications "
            f"{integ['notifications']['ok']}/{integ['notifications']['expected']}, "
            f"{integ['bad_calls']} bad, {integ['out_of_order']} out of order, "
            f"{integ['duplicates']} duplicates, {integ['failed_answers']} failed on purpose",
        ))  # fmt: skip
    width = max(len(k) for k, _ in rows)
    lines = [f"{k.ljust(width)}  {v}" for k, v in rows]
    for text in r["violations"][:10]:
        lines.append(f"{'violation'.ljust(width)}  {text}")
    for text in r["failed_expectations"]:
        lines.append(f"{'FAILED'.ljust(width)}  {text}")
    return "\n".join(lines)


def _lat(s: dict[str, Any]) -> str:
    if not s["count"]:
        return "no samples"
    return "p50 {p50} ms, p90 {p90} ms, p99 {p99} ms, max {max} ms (n={count})".format(**s)


def _svg_chart(title: str, t: list[int], series: dict[str, list[Any]], unit: str) -> str:
    w, h, pad = 760, 220, 45
    values = [v for vs in series.values() for v in vs if v is not None]
    top = max(values, default=1) or 1
    span = max(1, (t[-1] if t else 1))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">',
        f'<text x="{pad}" y="16" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{pad}" y1="{h - pad}" x2="{w - 10}" y2="{h - pad}" stroke="#888"/>',
        f'<line x1="{pad}" y1="24" x2="{pad}" y2="{h - pad}" stroke="#888"/>',
        f'<text x="4" y="30" font-size="11">{top:.4g}</text>',
        f'<text x="4" y="{h - pad}" font-size="11">0 {html.escape(unit)}</text>',
        f'<text x="{w - 60}" y="{h - pad + 16}" font-size="11">{span} s</text>',
    ]
    for k, (name, vs) in enumerate(series.items()):
        pts = [
            f"{pad + (x / span) * (w - pad - 10):.1f},{(h - pad) - (v / top) * (h - pad - 24):.1f}"
            for x, v in zip(t, vs, strict=True)
            if v is not None
        ]
        color = colors[k % len(colors)]
        if pts:
            line = " ".join(pts)
            parts.append(
                f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{line}"/>'
            )
        parts.append(
            f'<text x="{w - 200}" y="{16 + 14 * k}" font-size="11" fill="{color}">'
            f"{html.escape(name)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def render_html(r: dict[str, Any]) -> str:
    tl = r["timeline"]
    t = tl["t"]
    charts = [
        _svg_chart("latency update -> watcher (per second)", t,
                   {"p50 ms": tl["latency_p50_ms"], "p99 ms": tl["latency_p99_ms"]}, "ms"),
        _svg_chart("throughput", t,
                   {"updates/s": tl["updates_per_s"], "messages/s": tl["messages_per_s"]}, "/s"),
        _svg_chart("open watcher sockets", t, {"sockets": tl["open_sockets"]}, ""),
    ]  # fmt: skip
    table = html.escape(render_table(r))
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>sim report: {html.escape(r['scenario'])}</title>"
        "<style>body{font-family:sans-serif;margin:20px}pre{background:#f4f4f4;padding:10px;white-space:pre-wrap}"
        "svg{display:block;margin:10px 0;border:1px solid #ddd}</style></head><body>"
        f"<h1>Simulator run: {html.escape(r['scenario'])}</h1>"
        f"<pre>{table}</pre>{''.join(charts)}</body></html>"
    )


def write_reports(r: dict[str, Any], out_prefix: str | Path) -> tuple[Path, Path]:
    """Write PREFIX.json and PREFIX.html; return their paths."""
    base = Path(out_prefix)
    base.parent.mkdir(parents=True, exist_ok=True)
    json_path, html_path = base.with_suffix(".json"), base.with_suffix(".html")
    json_path.write_text(json.dumps(r, indent=1, default=str))
    html_path.write_text(render_html(r))
    return json_path, html_path
