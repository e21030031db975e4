#!/usr/bin/env python3
"""Draws kci's Grafana dashboard without Grafana.

Reads contrib/grafana/kci.json, sends every panel's PromQL (its template
variables filled in, as Grafana would) to a Prometheus' HTTP API
(/api/v1/query_range, /api/v1/query for instant panels), and draws the
panels where the dashboard's grid puts them, into one PNG. It draws the
panel types kci.json uses: timeseries (lines, threshold lines), stat (the
last value on its threshold colour, with a sparkline) and bargauge
(horizontal bars). Nothing is invented: a panel whose queries answer
nothing says "No data".

    python3 contrib/grafana/render.py --prometheus http://127.0.0.1:9090 \\
        --minutes 15 --out docs/dashboard.png

Needs matplotlib (Debian: apt-get install python3-matplotlib, then run it
with /usr/bin/python3). docs/observability.md tells how docs/dashboard.png
was made.
"""

import argparse
import datetime as dt
import json
import math
import os
import re
import sys
import urllib.parse
import urllib.request

try:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, MaxNLocator
except ImportError:
    sys.exit("render.py needs matplotlib: apt-get install python3-matplotlib (then /usr/bin/python3)")

# Grafana's dark theme and its classic palette.
BG = "#111217"
PANEL = "#181b1f"
BORDER = "#2c3235"
TEXT = "#ccccdc"
MUTED = "#8e8e9a"
GRID = "#2c3235"
PALETTE = ["#7EB26D", "#EAB839", "#6ED0E0", "#EF843C", "#E24D42", "#1F78C1", "#BA43A6",
           "#705DA0", "#508642", "#CCA300", "#447EBC", "#C15C17", "#890F02", "#0A437C",
           "#6D1F62", "#584477"]
COLORS = {"green": "#73BF69", "orange": "#FF9830", "red": "#F2495C", "blue": "#5794F2",
          "yellow": "#FADE2A", "purple": "#B877D9"}


def color(name):
    return COLORS.get(name, name)


# ---------------------------------------------------------------- Prometheus

def api(base, path, params):
    url = base.rstrip("/") + path + "?" + urllib.parse.urlencode(params)
    with urllib.request.urlopen(url, timeout=30) as r:
        body = json.load(r)
    if body.get("status") != "success":
        raise RuntimeError(f"{path}: {body.get('error')}")
    return body["data"]


def fill(expr, variables):
    def one(m):
        name = m.group(1) or m.group(2)
        if name not in variables:
            raise KeyError(f"no value for template variable ${name}")
        return variables[name]
    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)", one, expr)


def legend(fmt, metric):
    if not fmt:
        return "{" + ", ".join(f'{k}="{v}"' for k, v in sorted(metric.items())) + "}"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt).strip()


# ---------------------------------------------------------------- units

def fmt_value(v, unit, short=False):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if unit == "percentunit":
        return f"{v * 100:.0f}%" if short or abs(v) >= 0.1 else f"{v * 100:.1f}%"
    if unit == "s":
        a = abs(v)
        if a == 0:
            return "0 s"
        if a < 1:
            return f"{v * 1000:.0f} ms"
        if a < 600:
            return f"{v:.1f} s" if a < 10 else f"{v:.0f} s"
        if a < 3600:
            return f"{v / 60:.1f} min"
        return f"{v / 3600:.1f} h"
    suffix = "/s" if unit == "ops" else ""
    a = abs(v)
    if a >= 1e6:
        s = f"{v / 1e6:.1f}M"
    elif a >= 1e3:
        s = f"{v / 1e3:.1f}k"
    elif a == int(a):
        s = f"{v:.0f}"
    elif a >= 10:
        s = f"{v:.0f}"
    elif a >= 1:
        s = f"{v:.1f}"
    else:
        s = f"{v:.2f}"
    return s + suffix


def threshold_color(v, steps):
    c = steps[0]["color"] if steps else "green"
    for s in steps:
        if s.get("value") is None or (v is not None and v >= s["value"]):
            c = s["color"]
    return color(c)


# ---------------------------------------------------------------- drawing

def time_locator(minutes):
    """Ticks on round minutes or hours, about six across the range."""
    step = min(n for n in (1, 2, 5, 10, 15, 20, 30, 60, 120, 180, 360, 720, 1440)
               if n >= max(1, round(minutes / 6)))
    if step < 60:
        return mdates.MinuteLocator(byminute=range(0, 60, step), tz=dt.timezone.utc)
    return mdates.HourLocator(byhour=range(0, 24, min(step // 60, 24)), tz=dt.timezone.utc)


def panels_of(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prometheus", default="http://127.0.0.1:9090")
    ap.add_argument("--dashboard", default="contrib/grafana/kci.json")
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--minutes", type=float, default=15, help="time range, ending now (or at --end)")
    ap.add_argument("--end", type=float, help="end of the range, Unix seconds (default: now)")
    ap.add_argument("--step", type=float, help="seconds between points (default: range/240, at least 1)")
    ap.add_argument("--rate-interval", default="30s",
                    help="what $__rate_interval stands for (Grafana: 4 scrape intervals or more)")
    ap.add_argument("--var", action="append", default=[], metavar="NAME=VALUE",
                    help="a template variable's value (default job=kci, instance=.*)")
    ap.add_argument("--note", default="", help="a line under the title, saying what the data is")
    ap.add_argument("--dpi", type=int, default=110)
    a = ap.parse_args()

    dash = json.load(open(a.dashboard))
    end = a.end or dt.datetime.now(dt.timezone.utc).timestamp()
    start = end - a.minutes * 60
    step = a.step or max(1.0, round(a.minutes * 60 / 240))
    variables = {"job": "kci", "instance": ".*", "__rate_interval": a.rate_interval,
                 "__interval": f"{int(step)}s", "__range": f"{int(a.minutes * 60)}s"}
    for kv in a.var:
        k, _, v = kv.partition("=")
        variables[k] = v

    panels = [p for p in panels_of(dash)]
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in panels)
    W = 22.0                      # inches for 24 grid columns
    UNIT_H = 0.34                 # inches per grid row
    HEADER = 0.9
    H = HEADER + rows * UNIT_H + 0.2
    fig = plt.figure(figsize=(W, H), facecolor=BG)
    fx = lambda inches: inches / W
    fy = lambda inches: inches / H

    fig.text(fx(0.2), 1 - fy(0.35), dash.get("title", "dashboard"), color=TEXT, fontsize=20, weight="bold", va="center")
    t0 = dt.datetime.fromtimestamp(start, dt.timezone.utc)
    t1 = dt.datetime.fromtimestamp(end, dt.timezone.utc)
    sub = (f"{os.path.basename(a.dashboard)}, rendered by contrib/grafana/render.py from {a.prometheus} - "
           f"{t0:%Y-%m-%d %H:%M:%S} to {t1:%H:%M:%S} UTC, step {step:g}s, "
           + ", ".join(f"{k}={v}" for k, v in variables.items() if not k.startswith("__"))
           + f", $__rate_interval={a.rate_interval}")
    fig.text(fx(0.2), 1 - fy(0.68), sub, color=MUTED, fontsize=10, va="center")
    if a.note:
        fig.text(1 - fx(0.2), 1 - fy(0.35), a.note, color=MUTED, fontsize=10, va="center", ha="right")

    missing = []
    for p in panels:
        g = p["gridPos"]
        x0 = g["x"] / 24 * W
        w = g["w"] / 24 * W
        top = HEADER + g["y"] * UNIT_H
        h = g["h"] * UNIT_H
        if p["type"] == "row":
            fig.text(fx(x0 + 0.15), 1 - fy(top + h / 2), p["title"], color=TEXT, fontsize=14, weight="bold", va="center")
            fig.add_artist(plt.Line2D([fx(x0 + 0.1), fx(x0 + w - 0.1)], [1 - fy(top + h - 0.02)] * 2, color=BORDER, lw=1))
            continue
        pad = 0.06
        box = fig.add_axes([fx(x0 + pad), 1 - fy(top + h - pad), fx(w - 2 * pad), fy(h - 2 * pad)])
        box.set_facecolor(PANEL)
        box.set_xticks([])
        box.set_yticks([])
        for s in box.spines.values():
            s.set_color(BORDER)
        box.set_zorder(0)
        fig.text(fx(x0 + 0.18), 1 - fy(top + 0.22), p["title"], color="white" if p["type"] == "stat" else TEXT,
                 fontsize=11, weight="bold", va="center", zorder=5)
        defaults = p.get("fieldConfig", {}).get("defaults", {})
        unit = defaults.get("unit", "short")
        steps = defaults.get("thresholds", {}).get("steps", [])

        series = []  # (label, [(t, v)])
        for t in p.get("targets", []):
            expr = fill(t["expr"], variables)
            try:
                if t.get("instant"):
                    data = api(a.prometheus, "/api/v1/query", {"query": expr, "time": end})
                    for r in data["result"]:
                        series.append((legend(t.get("legendFormat"), r["metric"]), [(end, float(r["value"][1]))]))
                else:
                    data = api(a.prometheus, "/api/v1/query_range",
                               {"query": expr, "start": start, "end": end, "step": step})
                    for r in data["result"]:
                        pts = [(float(ts), float(v)) for ts, v in r["values"]]
                        series.append((legend(t.get("legendFormat"), r["metric"]), pts))
            except Exception as e:  # noqa: BLE001 - shown on the panel
                series.append((f"query failed: {e}", []))
        series = [(l, [(t, v) for t, v in pts if not math.isnan(v)]) for l, pts in series]
        series = [(l, pts) for l, pts in series if pts]
        series.sort(key=lambda s: s[0])

        inner_x = x0 + 0.25
        inner_w = w - 0.45
        if not series:
            missing.append(p["title"])
            fig.text(fx(x0 + w / 2), 1 - fy(top + h / 2), "No data", color=MUTED, fontsize=13, ha="center", va="center")
            continue

        if p["type"] == "stat":
            label, pts = series[0]
            last = pts[-1][1]
            c = threshold_color(last, steps)
            box.set_facecolor(c)
            spark = fig.add_axes([fx(x0 + pad), 1 - fy(top + h - pad), fx(w - 2 * pad), fy((h - 2 * pad) * 0.45)])
            spark.set_axis_off()
            spark.patch.set_alpha(0)
            if len(pts) > 1:
                xs = [t for t, _ in pts]
                ys = [v for _, v in pts]
                spark.fill_between(xs, ys, min(0, min(ys)), color="white", alpha=0.18, lw=0)
                spark.plot(xs, ys, color="white", alpha=0.45, lw=1.2)
                spark.set_xlim(start, end)
                hi = max(ys)
                spark.set_ylim(min(0, min(ys)), hi * 1.1 if hi > 0 else 1)
            fig.text(fx(x0 + w / 2), 1 - fy(top + h * 0.42), fmt_value(last, unit), color="white",
                     fontsize=34, weight="bold", ha="center", va="center")
            continue

        if p["type"] == "bargauge":
            ax = fig.add_axes([fx(inner_x + inner_w * 0.28), 1 - fy(top + h - 0.25), fx(inner_w * 0.62), fy(h - 0.7)])
            ax.set_facecolor(PANEL)
            labels = [l for l, _ in series]
            vals = [pts[-1][1] for _, pts in series]
            ys = list(range(len(vals)))[::-1]
            ax.barh(ys, vals, color=[PALETTE[i % len(PALETTE)] for i in range(len(vals))], height=0.65)
            ax.set_yticks(ys)
            ax.set_yticklabels(labels, color=TEXT, fontsize=9)
            hi = max(vals) if max(vals) > 0 else 1
            ax.set_xlim(0, hi * 1.18)
            for yv, v in zip(ys, vals):
                ax.text(v + hi * 0.02, yv, fmt_value(v, unit), color=TEXT, fontsize=9, va="center")
            ax.set_xticks([])
            for s in ax.spines.values():
                s.set_visible(False)
            ax.tick_params(length=0)
            continue

        # timeseries
        ncol = max(1, int(inner_w / 2.6))
        shown = series[:4 * ncol]
        nrows = math.ceil(len(shown) / ncol) + (1 if len(series) > len(shown) else 0)
        leg_h = 0.2 * nrows + 0.1
        plot_top = top + 0.45
        plot_h = h - 0.45 - leg_h - 0.35
        ax = fig.add_axes([fx(inner_x + 0.5), 1 - fy(plot_top + plot_h), fx(inner_w - 0.5), fy(plot_h)])
        ax.set_facecolor(PANEL)
        for i, (label, pts) in enumerate(series):
            xs = [dt.datetime.fromtimestamp(t, dt.timezone.utc) for t, _ in pts]
            ys = [v for _, v in pts]
            c = PALETTE[i % len(PALETTE)]
            ax.plot(xs, ys, color=c, lw=1.4, label=label if i < len(shown) else None)
            ax.fill_between(xs, ys, 0, color=c, alpha=0.07, lw=0)
        style = defaults.get("custom", {}).get("thresholdsStyle", {}).get("mode", "off")
        if style != "off":
            for s in steps:
                if s.get("value") is not None:
                    ax.axhline(s["value"], color=color(s["color"]), lw=1, ls="--", alpha=0.8)
        ax.set_xlim(t0, t1)
        lo = defaults.get("min")
        hi = defaults.get("max")
        top_v = max(v for _, pts in series for _, v in pts)
        if hi is None:  # as Grafana: the data sets the range; a threshold above it is not drawn
            hi = top_v * 1.1 if top_v > 0 else 1
        ax.set_ylim(lo if lo is not None else None, hi)
        ax.yaxis.set_major_locator(MaxNLocator(4))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _p, u=unit: fmt_value(v, u, short=True)))
        ax.xaxis.set_major_locator(time_locator(a.minutes))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M" if a.minutes > 4 else "%H:%M:%S", tz=dt.timezone.utc))
        ax.tick_params(colors=MUTED, labelsize=8, length=0)
        ax.grid(True, color=GRID, lw=0.6)
        for s in ax.spines.values():
            s.set_visible(False)
        handles, labels = ax.get_legend_handles_labels()
        if len(series) > len(shown):
            labels = labels + [f"... and {len(series) - len(shown)} more"]
            handles = handles + [plt.Line2D([], [], color=PANEL)]
        leg = fig.legend(handles, labels, loc="upper left", ncol=ncol, frameon=False, fontsize=8,
                         bbox_to_anchor=(fx(inner_x + 0.4), 1 - fy(plot_top + plot_h + 0.3)),
                         handlelength=1.2, columnspacing=1.2, labelcolor=TEXT)
        for t in leg.get_texts():
            t.set_color(TEXT)

    fig.savefig(a.out, dpi=a.dpi, facecolor=BG)
    print(f"wrote {a.out}: {len(panels)} panels" + (f"; no data: {', '.join(missing)}" if missing else ""))


if __name__ == "__main__":
    main()
