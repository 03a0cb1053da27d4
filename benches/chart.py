#!/usr/bin/env python3
"""Draw a load-comparison summary (the JSON benches/compare_report.py writes) as one
self-contained SVG: per group of targets (plain HTTP, HTTPS interception, tools, ... whatever
the summary holds), horizontal bars of max-rate throughput (req/s) on the left and p99 latency
at the fixed rate on the right (with the p99 added over direct where the summary has it),
behalf's bars highlighted. Standard library only.

    python3 benches/chart.py SUMMARY.json OUT.svg

Groups: a `group` field on a summary entry or on its meta.targets entry wins (or a
meta.groups {target: group} map); without one, a target is grouped by its name: NAME-tls is
HTTPS interception, tool-NAME / wasm... / NAME-tool is tools, anything else plain HTTP.
Groups and targets keep the order of the summary. A phase the run skipped (RATE=0 has no fixed
rate) drops its panel with a note; a target missing from one phase gets "no data" there.
Each panel has its own linear scale per group; the thin whisker on a bar is the range over
the rounds, and a red note marks any answer other than 200.
"""

import json
import math
import os
import sys
from xml.sax.saxutils import escape

# --- look -----------------------------------------------------------------------------------
FONT = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif"
INK = "#1f2328"
MUTED = "#57606a"
FAINT = "#8c959f"
GRID = "#e6e8eb"
BG = "#ffffff"
BEHALF = "#e8590c"  # behalf's bars
DIRECT = "#c3c9d0"  # the baseline (no proxy)
PEER = "#4c78a8"  # every other target
BAD = "#cf222e"

WIDTH = 1160
MARGIN = 24
LABEL_W = 130  # target names
PANEL_GAP = 36
ROW_H = 22
BAR_H = 14
GROUP_HEAD = 26
AXIS_H = 22
GROUP_GAP = 18

GROUP_LABELS = {
    "plain": "Plain HTTP",
    "http": "Plain HTTP",
    "tls": "HTTPS interception",
    "https": "HTTPS interception",
    "tools": "Tools",
    "tool": "Tools",
}


def text_w(s, size):
    """Rough rendered width of s at font size `size` (generous, so labels do not collide)."""
    return len(s) * size * 0.6


def group_of(name, entry, meta_targets, meta_groups):
    g = entry.get("group") or (meta_targets.get(name) or {}).get("group") or meta_groups.get(name)
    if g:
        return GROUP_LABELS.get(str(g).lower(), str(g))
    n = name.lower()
    if n.endswith("-tls") or n.endswith("-https"):
        return "HTTPS interception"
    if n.startswith(("tool-", "tools-", "wasm")) or n.endswith(("-tool", "-wasm")):
        return "Tools"
    return "Plain HTTP"


def nice_ticks(vmax, n=5):
    """0..top in round steps (1, 2, 2.5, 5 x 10^k) with top >= vmax."""
    if not vmax or vmax <= 0 or not math.isfinite(vmax):
        return [0, 1]
    raw = vmax / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    top = step * math.ceil(vmax / step - 1e-9)
    count = int(round(top / step))
    return [i * step for i in range(count + 1)]


def fmt_tick(v, unit):
    if unit == "ms":
        return f"{v:g}"
    if v >= 1e6:
        return f"{v / 1e6:g}M"
    if v >= 1e3:
        return f"{v / 1e3:g}k"
    return f"{v:g}"


def fmt_ms(v):
    if v is None:
        return "-"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def fmt_added_ms(v):
    return ("+" if v >= 0 else "\u2212") + fmt_ms(abs(v))


def num(v):
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


class Svg:
    def __init__(self):
        self.parts = []

    def add(self, s):
        self.parts.append(s)

    def text(self, x, y, s, size=11, fill=INK, anchor="start", weight="normal", style="normal"):
        extra = ""
        if weight != "normal":
            extra += f' font-weight="{weight}"'
        if style != "normal":
            extra += f' font-style="{style}"'
        self.add(
            f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" fill="{fill}" '
            f'text-anchor="{anchor}"{extra}>{escape(s)}</text>'
        )

    def rect(self, x, y, w, h, fill, extra=""):
        self.add(f'<rect x="{x:.1f}" y="{y:.1f}" width="{max(w, 0):.1f}" height="{h:.1f}" fill="{fill}"{extra}/>')

    def line(self, x1, y1, x2, y2, stroke, width=1, extra=""):
        self.add(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{stroke}" '
            f'stroke-width="{width}"{extra}/>'
        )


def bar_color(name):
    n = name.lower()
    if n.startswith("behalf"):
        return BEHALF
    if n.startswith("direct"):
        return DIRECT
    return PEER


def draw_panel(svg, x0, width, x_limit, y_rows, names, data, unit, label_fn, whisker_key):
    """One group's bars in one panel, scaled to `width`; labels end before x_limit.
    data: {target: summary entry of this phase}."""
    values = [num(data[n].get("rps" if unit == "req/s" else "p99_ms")) for n in names if n in data]
    spans = []
    for n in names:
        if n in data:
            spans += [v for v in (num(x) for x in data[n].get(whisker_key) or []) if v is not None]
    vmax = max([v for v in values if v is not None] + spans + [0])
    ticks = nice_ticks(vmax)
    top = ticks[-1] or 1
    scale = width / top
    y_top = y_rows
    y_bot = y_rows + len(names) * ROW_H
    # grid and axis
    for t in ticks:
        x = x0 + t * scale
        svg.line(x, y_top - 2, x, y_bot + 2, GRID if t else FAINT)
        svg.text(x, y_bot + 14, fmt_tick(t, unit), size=10, fill=MUTED, anchor="middle")
    svg.text(x0 + width + 10 + text_w(fmt_tick(top, unit), 10) / 2, y_bot + 14, unit, size=10, fill=FAINT)
    for i, n in enumerate(names):
        yc = y_top + i * ROW_H + ROW_H / 2
        s = data.get(n)
        v = num(s.get("rps" if unit == "req/s" else "p99_ms")) if s else None
        if v is None:
            svg.text(x0 + 4, yc + 4, "no data", size=10.5, fill=FAINT, style="italic")
            continue
        w = max(v * scale, 1.5)
        color = bar_color(n)
        bold = n.lower().startswith("behalf")
        title = f"{n}: {label_fn(s)[0]}"
        svg.add(f"<g><title>{escape(title)}</title>")
        svg.rect(x0, yc - BAR_H / 2, w, BAR_H, color, ' rx="2"' if w > 6 else "")
        rounds = [x for x in (num(r) for r in s.get(whisker_key) or []) if x is not None]
        if len(rounds) > 1:
            lo, hi = min(rounds) * scale + x0, max(rounds) * scale + x0
            svg.line(lo, yc, hi, yc, INK, 1.2, ' stroke-opacity="0.55"')
            for xx in (lo, hi):
                svg.line(xx, yc - 3.5, xx, yc + 3.5, INK, 1.2, ' stroke-opacity="0.55"')
        main, note, note_color = label_fn(s)
        main_w = text_w(main, 11)
        note_w = text_w(note, 10) + 6 if note else 0
        bar_end = x0 + w
        whisk_end = max([bar_end] + [x0 + r * scale for r in rounds])
        if whisk_end + 6 + main_w + note_w <= x_limit:
            # value (and note) after the bar
            svg.text(whisk_end + 6, yc + 4, main, size=11, fill=INK, weight="bold" if bold else "normal")
            if note:
                svg.text(whisk_end + 12 + main_w, yc + 4, note, size=10, fill=note_color)
        else:
            # value inside the bar, right-aligned; the note after the bar
            svg.text(bar_end - 6, yc + 4, main, size=11, fill=INK if color == DIRECT else "#ffffff",
                     anchor="end", weight="bold")
            if note:
                svg.text(whisk_end + 6, yc + 4, note, size=10, fill=note_color)
        svg.add("</g>")


def main():
    if len(sys.argv) != 3 or sys.argv[1] in ("-h", "--help"):
        sys.exit("usage: python3 benches/chart.py SUMMARY.json OUT.svg")
    src, out = sys.argv[1], sys.argv[2]
    with open(src, encoding="utf-8") as f:
        doc = json.load(f)
    meta = doc.get("meta") or {}
    summary = [s for s in doc.get("summary") or [] if isinstance(s, dict) and s.get("target")]
    if not summary:
        sys.exit(f"{src}: no summary entries (is it a benches/compare_report.py JSON?)")
    meta_targets = {t.get("name"): t for t in meta.get("targets") or [] if isinstance(t, dict)}
    meta_groups = meta.get("groups") if isinstance(meta.get("groups"), dict) else {}

    by_phase = {}
    order = []
    for s in summary:
        by_phase.setdefault(s.get("phase"), {})[s["target"]] = s
        if s["target"] not in order:
            order.append(s["target"])
    # keep meta's target order where it knows the target
    meta_order = [n for n in meta_targets if n in order]
    order = meta_order + [n for n in order if n not in meta_order]
    first = {}
    for s in summary:
        first.setdefault(s["target"], s)
    groups = {}
    for n in order:
        groups.setdefault(group_of(n, first[n], meta_targets, meta_groups), []).append(n)

    max_data = by_phase.get("max") or {}
    fixed_data = by_phase.get("fixed") or {}
    rate = num(meta.get("fixed_rate"))
    if not rate and fixed_data:
        rates = [num(s.get("rps")) for s in fixed_data.values() if num(s.get("rps"))]
        rate = round(sum(rates) / len(rates)) if rates else None

    panels = []
    notes = []

    def rps_label(s):
        main = f"{s['rps']:,.0f}"
        x = num(s.get("x_direct"))
        note, color = "", MUTED
        if x is not None:
            note = f"{x:.2f}\u00d7 direct"
        if num(s.get("ok")) is not None and s["ok"] < 1:
            note = (note + " \u00b7 " if note else "") + f"only {s['ok']:.1%} 200s"
            color = BAD
        return main, note, color

    def p99_label(s):
        main = f"{fmt_ms(s['p99_ms'])} ms"
        added = num(s.get("added_p99_ms"))
        note, color = "", MUTED
        if added is not None:
            note = f"{fmt_added_ms(added)} vs direct"
        if num(s.get("ok")) is not None and s["ok"] < 1:
            note = (note + " \u00b7 " if note else "") + f"only {s['ok']:.1%} 200s"
            color = BAD
        return main, note, color

    if max_data:
        panels.append(("Max-rate throughput", "req/s, higher is better", max_data, "req/s", rps_label,
                       "rps_per_round"))
    else:
        notes.append("No max-rate phase in this summary.")
    if fixed_data:
        sub = f"at a fixed {rate:,.0f} req/s" if rate else "at the fixed rate"
        panels.append((f"p99 latency {sub}", "ms, lower is better", fixed_data, "ms", p99_label,
                       "p99_ms_per_round"))
    else:
        notes.append("No fixed-rate phase in this run (RATE=0): no latency panel.")

    # --- geometry ---------------------------------------------------------------------------
    n_panels = max(len(panels), 1)
    avail = WIDTH - 2 * MARGIN - LABEL_W - (n_panels - 1) * PANEL_GAP
    # leave room to the right of the longest bar for its label
    label_room = 190
    panel_w = avail / n_panels
    bar_w = panel_w - label_room

    svg = Svg()
    y = MARGIN + 8
    date = meta.get("date_utc") or ""
    date_txt = date.replace("T", " ").replace("Z", " UTC") if date else "date unknown"
    title = f"behalf load comparison \u2014 {date_txt}"
    machine = []
    if meta.get("cpus") is not None:
        machine.append(f"{meta['cpus']} CPUs")
    if meta.get("cpu_model"):
        machine.append(str(meta["cpu_model"]))
    if meta.get("kernel"):
        machine.append(f"kernel {meta['kernel']}")
    settings = []
    if meta.get("connections") is not None:
        settings.append(f"{meta['connections']} keep-alive connections")
    if meta.get("duration"):
        r = meta.get("rounds")
        settings.append(f"{meta['duration']} per run" + (f" \u00d7 {r} interleaved rounds" if r else ""))
    if meta.get("oha"):
        settings.append(str(meta["oha"]))
    body = []
    body_y0 = y
    y += 14
    body.append(("title", title, y))
    y += 22
    body.append(("sub", " \u00b7 ".join(machine) or "machine unknown", y))
    if settings:
        y += 17
        body.append(("sub", " \u00b7 ".join(settings), y))
    y += 22
    legend_y = y
    y += 14
    for note in notes:
        y += 16
        body.append(("note", note, y))
    y += 24
    panel_head_y = y
    y += 30
    rows_start = y

    layout = []
    for g, names in groups.items():
        layout.append((g, names, y))
        y += GROUP_HEAD + len(names) * ROW_H + AXIS_H + GROUP_GAP
    y += 4
    foot = []
    src_name = os.path.basename(src)
    foot.append(f"Source: {src_name} (benches/compare_report.py). Bars: mean over rounds; "
                f"whisker: range of the rounds. Each group has its own scale.")
    audit = []
    if meta.get("behalf_audit_verify_ok") is not None:
        recs = meta.get("behalf_audit_records_during_load")
        audit.append(
            "behalf audit chain " + ("verified" if meta["behalf_audit_verify_ok"] else "FAILED to verify")
            + (f" ({recs:,} records during the load)" if isinstance(recs, int) else "")
        )
    if meta.get("date_utc") and meta.get("end_utc"):
        audit.append(f"run {meta['date_utc']} to {meta['end_utc']}")
    if audit:
        foot.append("; ".join(audit) + ".")
    for line in foot:
        y += 15
    height = y + MARGIN

    svg.add(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height:.0f}" '
        f'viewBox="0 0 {WIDTH} {height:.0f}" font-family="{escape(FONT, {chr(34): "&quot;"})}">'
    )
    svg.add(f"<title>{escape(title)}</title>")
    svg.rect(0, 0, WIDTH, height, BG)
    for kind, s, yy in body:
        if kind == "title":
            svg.text(MARGIN, yy, s, size=19, weight="bold")
        elif kind == "sub":
            svg.text(MARGIN, yy, s, size=12, fill=MUTED)
        else:
            svg.text(MARGIN, yy, s, size=12, fill=BAD, style="italic")

    # legend
    lx = MARGIN
    for color, label in ((BEHALF, "behalf"), (DIRECT, "direct (no proxy, the limit)"), (PEER, "other proxies")):
        svg.rect(lx, legend_y - 9, 12, 12, color, ' rx="2"')
        svg.text(lx + 17, legend_y + 1, label, size=11.5, fill=INK)
        lx += 17 + len(label) * 11.5 * 0.52 + 22

    # panel headers
    px = [MARGIN + LABEL_W + i * (panel_w + PANEL_GAP) for i in range(len(panels))]
    for (head, sub, *_), x in zip(panels, px):
        svg.text(x, panel_head_y, head, size=14, weight="bold")
        svg.text(x, panel_head_y + 16, sub, size=11, fill=MUTED)
    if not panels:
        svg.text(MARGIN + LABEL_W, panel_head_y, "Nothing to draw: no max or fixed phase.", size=13, fill=BAD)

    for g, names, gy in layout:
        svg.text(MARGIN, gy + 15, g, size=13, weight="bold")
        svg.line(MARGIN, gy + 20, WIDTH - MARGIN, gy + 20, GRID)
        ry = gy + GROUP_HEAD
        for i, n in enumerate(names):
            yc = ry + i * ROW_H + ROW_H / 2
            is_b = n.lower().startswith("behalf")
            if is_b:
                svg.rect(MARGIN - 6, yc - ROW_H / 2 + 1, WIDTH - 2 * MARGIN + 12, ROW_H - 2, "#fff4e6", ' rx="3"')
            svg.text(MARGIN + LABEL_W - 12, yc + 4, n, size=12, fill=BEHALF if is_b else INK, anchor="end",
                     weight="bold" if is_b else "normal")
        for (head, sub, data, unit, label_fn, wkey), x in zip(panels, px):
            draw_panel(svg, x, bar_w, x + panel_w - 4, ry, names, data, unit, label_fn, wkey)

    fy = layout[-1][2] + GROUP_HEAD + len(layout[-1][1]) * ROW_H + AXIS_H + GROUP_GAP + 4 if layout else y
    for line in foot:
        fy += 15
        svg.text(MARGIN, fy, line, size=10.5, fill=FAINT)
    svg.add("</svg>")

    with open(out, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        f.write("\n".join(svg.parts) + "\n")
    print(f"wrote {out}: {len(groups)} group(s), {len(order)} target(s), "
          f"panels: {', '.join(p[0] for p in panels) or 'none'}")


if __name__ == "__main__":
    main()
