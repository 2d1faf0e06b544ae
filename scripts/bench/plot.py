"""Hand-written SVG plot of the benchmark (no dependencies): one panel per metric (total time,
QEMU downtime, client-visible downtime), workloads on the x axis, one bar per mode with the median
and a min/max whisker, log-scale y axis. A cell that never converged is drawn hatched at its limit
and labelled "n/c"."""

import math
from xml.sax.saxutils import escape

COLORS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860"]
PANELS = [("total_s", "Total migration time (s)"),
          ("downtime_ms", "QEMU-reported downtime (ms)"),
          ("client_ms", "Client-visible downtime (ms)")]


def _nice_ticks(lo, hi):
    ticks = []
    e = math.floor(math.log10(lo))
    while 10 ** e <= hi * 1.0001:
        for m in (1, 2, 5):
            v = m * 10 ** e
            if lo * 0.9999 <= v <= hi * 1.0001:
                ticks.append(v)
        e += 1
    return ticks


def _fmt(v):
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"


def svg(doc, summary):
    s = doc["settings"]
    cells = summary["cells"]
    wls, modes = s["workload_order"], s["modes"]
    pw, ph = 380, 300  # panel plot area
    ml, mt, mb, gap = 60, 50, 70, 40
    width = ml + len(PANELS) * (pw + gap + ml) - ml
    height = mt + ph + 60
    heading = (f"Live migration, {s['mem_mb']} MiB guest, {s['accel'].upper()}, {s['reps']} rep(s): "
               "median, min/max whiskers (log scale)")
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'font-family="sans-serif" font-size="11">',
           '<defs><pattern id="hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
           'patternTransform="rotate(45)"><rect width="6" height="6" fill="white"/>'
           '<line x1="0" y1="0" x2="0" y2="6" stroke="#888" stroke-width="3"/></pattern></defs>',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">{escape(heading)}</text>']
    for pi, (key, title) in enumerate(PANELS):
        x0 = ml + pi * (pw + gap + ml)
        y0 = mt
        vals = []
        for w in wls:
            for m in modes:
                c = cells[f"{w}/{m}"]
                st = c["conv"][key] if c["converged"] else (c["nc"][key] if key == "total_s" else None)
                if st:
                    vals += [st["min"], st["max"], st["median"]]
        vals = [v for v in vals if v and v > 0]
        out.append(f'<text x="{x0 + pw / 2}" y="{y0 - 10}" text-anchor="middle" font-size="13">{escape(title)}</text>')
        out.append(f'<rect x="{x0}" y="{y0}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
        if not vals:
            out.append(f'<text x="{x0 + pw / 2}" y="{y0 + ph / 2}" text-anchor="middle">no data</text>')
            continue
        lo = 10 ** math.floor(math.log10(min(vals)))
        hi = 10 ** math.ceil(math.log10(max(vals) * 1.05))
        if hi / lo < 10:
            hi = lo * 10

        def ypos(v, lo=lo, hi=hi, y0=y0):
            v = max(v, lo)
            return y0 + ph - (math.log10(v) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * ph

        for t in _nice_ticks(lo, hi):
            y = ypos(t)
            out.append(f'<line x1="{x0}" y1="{y:.1f}" x2="{x0 + pw}" y2="{y:.1f}" stroke="#ddd"/>')
            out.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
        gw = pw / len(wls)
        bw = min(34, gw * 0.8 / max(1, len(modes)))
        for wi, w in enumerate(wls):
            gx = x0 + wi * gw + (gw - bw * len(modes)) / 2
            out.append(f'<text x="{x0 + wi * gw + gw / 2:.1f}" y="{y0 + ph + 16}" text-anchor="middle">{escape(w)}</text>')
            for mi, m in enumerate(modes):
                c = cells[f"{w}/{m}"]
                nc = not c["converged"]
                st = c["conv"][key] if not nc else (c["nc"][key] if key == "total_s" else None)
                bx = gx + mi * bw
                if not st:
                    out.append(f'<text x="{bx + bw / 2:.1f}" y="{y0 + ph - 4}" text-anchor="middle" '
                               f'font-size="9">{"n/c" if nc else "—"}</text>')
                    continue
                yb, ym = y0 + ph, ypos(st["median"])
                tip = f"{w} {m}: median {st['median']:.4g}, min {st['min']:.4g}, max {st['max']:.4g}, n={st['n']}"
                fill = "url(#hatch)" if nc else COLORS[mi % len(COLORS)]
                out.append(f'<rect x="{bx + 1:.1f}" y="{ym:.1f}" width="{bw - 2:.1f}" height="{max(0.5, yb - ym):.1f}" '
                           f'fill="{fill}" stroke="{COLORS[mi % len(COLORS)]}"><title>{escape(tip)}</title></rect>')
                if st["max"] > st["min"]:
                    cx = bx + bw / 2
                    y1, y2 = ypos(st["min"]), ypos(st["max"])
                    out.append(f'<line x1="{cx:.1f}" y1="{y1:.1f}" x2="{cx:.1f}" y2="{y2:.1f}" stroke="black"/>')
                    for yy in (y1, y2):
                        out.append(f'<line x1="{cx - 4:.1f}" y1="{yy:.1f}" x2="{cx + 4:.1f}" y2="{yy:.1f}" stroke="black"/>')
                if nc:
                    out.append(f'<text x="{bx + bw / 2:.1f}" y="{ym - 4:.1f}" text-anchor="middle" font-size="9">n/c</text>')
    # legend
    ly = mt + ph + 40
    lx = ml
    for mi, m in enumerate(modes):
        out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS[mi % len(COLORS)]}"/>')
        out.append(f'<text x="{lx + 16}" y="{ly}">{escape(m)}</text>')
        lx += 90
    out.append(f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="url(#hatch)" stroke="#888"/>')
    out.append(f'<text x="{lx + 16}" y="{ly}">did not converge (n/c): time until cancel at the limit</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
