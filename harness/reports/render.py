"""Render a run's report from its directory: report.md, report.html, timeline.png.

Reads only `result.json` and `history.jsonl`, so `python -m harness report DIR`
re-renders any report. The verdict comes first, then the anomalies, then the
coverage (faults by protocol phase, sometimes-conditions, failpoints reached
and fired), then the timeline (published, consumed, in_flight and the
watermarks; faults; restarts).
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any, Dict, List


def _load(rdir: str):
    with open(os.path.join(rdir, "result.json")) as f:
        result = json.load(f)
    events = []
    hp = os.path.join(rdir, "history.jsonl")
    if os.path.exists(hp):
        with open(hp) as f:
            events = [json.loads(line) for line in f if line.strip()]
    return result, events


def timeline_series(events: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Points of the timeline, seconds since the first event."""
    t0 = events[0]["mono"] if events else 0.0
    pub, con, faults, restarts, cuts = [], [], [], [], []
    for e in events:
        t = e["mono"] - t0
        ev, proc = e.get("ev"), e.get("proc")
        if proc == "producer" and ev == "publish":
            pub.append((t, e["published"]))
        elif proc == "producer" and ev == "recover":
            pub.append((t, e.get("published", 0)))
        elif proc.startswith("consumer") and ev == "consumed":
            con.append((t, e["consumed"]))
        elif proc == "supervisor" and ev == "powercut":
            cuts.append((t, f"POWER CUT ({e.get('mode')}): {e.get('unsynced_writes_dropped')} writes dropped, "
                            f"{len(e.get('entries_undone') or ())} entries undone"))
        elif proc == "supervisor" and ev in ("kill", "pause"):
            faults.append((t, f"{ev} {e['target']}#{e['target_inc']}"))
        elif proc != "supervisor" and ev == "failpoint":
            faults.append((t, f"{e['point']} ({e['action']}) {proc}#{e['inc']}"))
        elif proc == "supervisor" and ev == "spawn" and e["target_inc"] > 0:
            restarts.append((t, f"{e['target']}#{e['target_inc']}"))
    # in_flight as a step function over the merged change points
    points = sorted([(t, "p", v) for t, v in pub] + [(t, "c", v) for t, v in con])
    p = c = 0
    infl = []
    for t, kind, v in points:
        if kind == "p":
            p = v
        else:
            c = max(c, v)
        infl.append((t, p - c))
    return {"published": pub, "consumed": con, "in_flight": infl, "faults": faults, "restarts": restarts,
            "powercuts": cuts}


def render_timeline(result: Dict[str, Any], events: List[Dict[str, Any]], path: str) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = timeline_series(events)
    fig, ax = plt.subplots(figsize=(10, 4.2), dpi=100)
    for key, style in (("published", "-"), ("consumed", "-"), ("in_flight", "-")):
        pts = s[key]
        if pts:
            ax.step([t for t, _ in pts], [v for _, v in pts], style, where="post", label=key)
    wm = (result.get("final") or {}).get("watermarks") or {}
    if wm.get("high") is not None:
        ax.axhline(wm["high"], color="red", ls="--", lw=0.8, label=f"high watermark {wm['high']}")
        ax.axhline(wm["low"], color="orange", ls="--", lw=0.8, label=f"low watermark {wm['low']}")
    for t, label in s["faults"]:
        ax.axvline(t, color="black", lw=0.8, alpha=0.7)
        ax.annotate(label, (t, ax.get_ylim()[1]), rotation=90, fontsize=6, va="top", ha="right")
    for t, label in s["powercuts"]:
        ax.axvline(t, color="purple", lw=2.0, alpha=0.8)
        ax.annotate(label, (t, ax.get_ylim()[1]), rotation=90, fontsize=6, va="top", ha="left", color="purple")
    for t, label in s["restarts"]:
        ax.axvline(t, color="green", lw=0.8, ls=":", alpha=0.8)
    ax.set_xlabel("seconds since start (black: faults, purple: power cuts, green dotted: restarts)")
    ax.set_ylabel("records")
    ax.set_title(f"{result['scenario']} seed {result['seed']}: {result['outcome']}")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def _faults_line(result: Dict[str, Any]) -> str:
    f = result.get("faults")
    if not isinstance(f, dict):  # a report written before faults were confirmed
        return f"{f} faults scheduled, {result.get('faults_fired')} fired"
    out = f"faults {f['planned']} planned, {f['landed']} landed, {len(f['missed'])} missed"
    for m in f["missed"][:5]:
        out += f"; missed #{m['index']} {m['kind']} {m['target']} ({m['at']}): {m['reason']}"
    return out


def powerloss_lines(result: Dict[str, Any]) -> List[str]:
    """The report's power-cut section (empty for a run without power cuts)."""
    pl = result.get("powerloss")
    if not pl:
        return []
    out = [f"{pl['cuts']} power cut(s), mode {pl['mode']}: {pl['unsynced_writes_dropped']} unsynced writes "
           f"dropped, {pl['bytes_lost']} bytes lost, {pl['files_reverted']} files reverted, "
           f"{pl['entries_undone']} directory entries undone (rebuild at most {pl['rebuild_ms_max']} ms)."]
    for c in pl.get("per_cut", []):
        undone = ", ".join(x.split(" ")[0] for x in c["entries_undone"][:6])
        out.append(f"- cut {c['index']} (fault {c['fault']}, {c['cause']}): killed {', '.join(c['killed'])}; "
                   f"{c['unsynced_writes_dropped']} writes dropped, {c['bytes_lost']} bytes lost; reverted "
                   f"{', '.join(c['files_reverted'][:6]) or 'none'}; undone {undone or 'none'}"
                   + (f"; unmodeled {len(c['unmodeled'])}" if c.get("unmodeled") else ""))
    return out


def _verdict_line(result: Dict[str, Any]) -> str:
    from ..verdict import verdict_line

    return verdict_line(result["verdict"], result["outcome"])


def store_server_line(result: Dict[str, Any]) -> str:
    """The store server the run judged (a networked backend's software, version, persistence), or ""."""
    served = (result.get("final") or {}).get("store_server") or {}
    s = served.get("server") or {}
    if not s:
        return ""
    line = f"Store server: {s.get('software')} {s.get('version') or ''}".rstrip()
    if s.get("appendonly"):
        line += (f", persistence {s.get('persistence')} (appendonly {s.get('appendonly')}, appendfsync "
                 f"{s.get('appendfsync')}, save {s.get('save')})")
    elif s.get("persistence"):
        line += f", persistence {s.get('persistence')}"
    faults = [x for p in served.get("proxies") or [] for x in p.get("landed") or []]
    return line + f"; {served.get('starts', 0)} start(s); {len(faults)} network fault(s) applied by the proxies."


def markdown(result: Dict[str, Any]) -> str:
    out = [f"# {result['scenario']} seed {result['seed']}", "", f"**{_verdict_line(result)}**", ""]
    for r in result["verdict"].get("reasons", []):
        out.append(f"- {r}")
    if result.get("reason"):
        out += ["", f"Outcome reason: `{str(result['reason'])[:500]}`"]
    out += ["", "Replay:", "", "```", result["replay_command"], "```", "",
            f"Backend `{result['backend']}`, {_faults_line(result)}, "
            f"incarnations {result.get('incarnations')}, wall {result['wall_s']} s, "
            f"witness {result.get('witness_summary')}.", "", *([store_server_line(result), ""]
                                                                if store_server_line(result) else []),
            "## Properties", "",
            "| property | name | valid | counts |", "|---|---|---|---|"]
    for prop, r in sorted(result["properties"].items()):
        valid = {True: "yes", False: "**NO**", None: "n/a"}[r.get("valid")]
        counts = ", ".join(f"{k}={v}" for k, v in (r.get("counts") or {}).items())
        out.append(f"| {prop} | {r.get('name', '')} | {valid} | {counts} |")
    anomalies = [(p, a) for p, r in sorted(result["properties"].items()) for a in r.get("anomalies") or []]
    out += ["", "## Anomalies", ""]
    if not anomalies:
        out.append("None.")
    for p, a in anomalies[:50]:
        out.append(f"- **{p} {a.get('kind')}**: {a.get('message')} (samples {a.get('sample_ids')[:10]}, "
                   f"steps {a.get('steps')[:10]}, incarnations {a.get('incarnations')[:10]}, "
                   f"history lines {a.get('lines')[:10]})")
    if len(anomalies) > 50:
        out.append(f"- ... {len(anomalies) - 50} more in result.json")
    pl = powerloss_lines(result)
    if pl:
        out += ["", "## Power cuts", ""] + pl
    if result.get("coverage"):
        from ..coverage.text import markdown as coverage_markdown

        out += ["", "## Coverage", ""] + coverage_markdown(result["coverage"], result.get("coverage_gaps") or [])
    out += ["", "## Timeline", "", "![timeline](timeline.png)", ""]
    return "\n".join(out)


def html_page(result: Dict[str, Any], png_path: str) -> str:
    ok = result["verdict"]["as_expected"]
    img = ""
    if os.path.exists(png_path):
        with open(png_path, "rb") as f:
            img = f'<img alt="timeline" src="data:image/png;base64,{base64.b64encode(f.read()).decode()}">'
    rows = []
    for prop, r in sorted(result["properties"].items()):
        valid = {True: "yes", False: "NO", None: "n/a"}[r.get("valid")]
        cls = {True: "ok", False: "bad", None: "na"}[r.get("valid")]
        counts = ", ".join(f"{k}={v}" for k, v in (r.get("counts") or {}).items())
        rows.append(f"<tr class='{cls}'><td>{prop}</td><td>{html.escape(r.get('name', ''))}</td>"
                    f"<td>{valid}</td><td>{html.escape(counts)}</td></tr>")
    anomalies = []
    for prop, r in sorted(result["properties"].items()):
        for a in (r.get("anomalies") or [])[:50]:
            anomalies.append(f"<li><b>{prop} {html.escape(a.get('kind', ''))}</b>: "
                             f"{html.escape(a.get('message', ''))} <small>lines {a.get('lines', [])[:10]}</small></li>")
    return f"""<!doctype html><html><head><meta charset="utf-8">
<title>{html.escape(result['scenario'])} seed {result['seed']}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:1em auto}}
.verdict{{padding:.6em;font-size:1.2em;color:#fff;background:{'#2a7' if ok else '#c33'}}}
td,th{{border:1px solid #ccc;padding:2px 6px}} table{{border-collapse:collapse}}
tr.bad{{background:#fdd}} tr.na{{color:#888}} img{{max-width:100%}} code{{background:#eee}}</style></head><body>
<h1>{html.escape(result['scenario'])} seed {result['seed']}</h1>
<div class="verdict">{html.escape(_verdict_line(result))}</div>
<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in result['verdict'].get('reasons', []))}</ul>
<p>Replay: <code>{html.escape(result['replay_command'])}</code></p>
<h2>Anomalies</h2><ul>{''.join(anomalies) or '<li>None.</li>'}</ul>
<h2>Properties</h2><table><tr><th>property</th><th>name</th><th>valid</th><th>counts</th></tr>{''.join(rows)}</table>
{('<h2>Power cuts</h2><ul>' + ''.join(f'<li>{html.escape(x.lstrip("- "))}</li>' for x in powerloss_lines(result))
   + '</ul>') if result.get('powerloss') else ''}
{coverage_html(result)}
<h2>Timeline</h2>{img}
<p>Backend {html.escape(result['backend'])}; {html.escape(_faults_line(result))};
incarnations {html.escape(str(result.get('incarnations')))}; wall {result['wall_s']} s.</p>
<p>{html.escape(store_server_line(result))}</p>
</body></html>"""


def coverage_html(result: Dict[str, Any]) -> str:
    """The report's coverage section: the same tables as report.md, as HTML."""
    cov = result.get("coverage")
    if not cov:
        return ""
    from ..coverage.text import failpoint_table, fault_table, sometimes_table

    def table(lines: List[str]) -> str:
        if not lines or not lines[0].startswith("|"):
            return f"<p>{html.escape(' '.join(lines))}</p>"
        rows = [[c.strip().strip("`") for c in ln.strip("|").split("|")] for ln in lines if not ln.startswith("|---")]
        head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows[1:])
        return f"<table><tr>{head}</tr>{body}</table>"

    gaps = "".join(f"<li>gap: {html.escape(g)}</li>" for g in result.get("coverage_gaps") or [])
    return ("<h2>Coverage</h2>" + (f"<ul>{gaps}</ul>" if gaps else "") + "<h3>Faults by protocol phase</h3>"
            + table(fault_table(cov)) + "<h3>Sometimes-conditions</h3>" + table(sometimes_table(cov))
            + "<h3>Failpoints</h3>" + table(failpoint_table(cov)))


def render_report(rdir: str) -> None:
    result, events = _load(rdir)
    png = os.path.join(rdir, "timeline.png")
    try:
        render_timeline(result, events, png)
    except Exception as e:  # a plot must never hide the verdict
        with open(os.path.join(rdir, "timeline.error.txt"), "w") as f:
            f.write(repr(e))
    with open(os.path.join(rdir, "report.md"), "w") as f:
        f.write(markdown(result))
    with open(os.path.join(rdir, "report.html"), "w") as f:
        f.write(html_page(result, png))
