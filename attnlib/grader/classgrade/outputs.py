"""What ``attnlib grade-class`` writes from the students' records: report folders, gradebooks, the class report.

Everything here is a pure function of the records (and the shard manifest), sorted by student id, with no clock
in it, so grading a class in shards and merging them gives the same files as grading it in one run. The one
time in the outputs is each student's ``graded_at`` (in the gradebook and the student's record).
"""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import re
from pathlib import Path

from .. import report as report_files
from ..exercises import BY_KEY, EXERCISE_SETS, exercises_of
from . import adapter

CATEGORIES = ("full marks", "named mistake", "other error", "not attempted", "missing", "not graded")
COLOURS = {
    "full marks": "#2e7d32",
    "named mistake": "#e65100",
    "other error": "#ad1457",
    "not attempted": "#9e9e9e",
    "missing": "#d7ccc8",
    "not graded": "#1565c0",
}


def student_folder(ident: str) -> str:
    """The folder name of a student's report: the id made file-system-safe (with a hash if it had to change)."""
    slug = re.sub(r"[^A-Za-z0-9._@+-]", "_", ident).strip(".")[:80] or "student"
    return slug if slug == ident else f"{slug}-{hashlib.sha256(ident.encode()).hexdigest()[:8]}"


def write_student_folders(out: Path, records: list[dict]) -> None:
    for rec in records:
        files = adapter.report_texts(rec)
        files["record.json"] = json.dumps(rec, indent=1, sort_keys=True) + "\n"
        report_files.write_folder(out / "students" / student_folder(rec["student"]), files)


# ----------------------------------------------------------------------------------------------------------
# Per-student facts


def category(e: dict) -> str:
    if e["status"] == "not graded":
        return "not graded"
    if e["status"] == "missing":
        return "missing"
    if e["score"] is not None and e["score"] >= e["points"]:
        return "full marks"
    if e["mistakes"]:
        return "named mistake"
    if "NotImplementedError" in e["message"] and not e["score"]:
        return "not attempted"
    return "other error"


def set_scores(rec: dict) -> dict[str, float | None]:
    """Points per set; None for a set with an exercise that was not graded (neither points nor zero)."""
    out: dict[str, float | None] = {}
    for s in EXERCISE_SETS:
        exs = [e for e in rec["exercises"] if e["set"] == s]
        if any(e["status"] == "not graded" for e in exs) or not exs:
            out[s] = None
        else:
            out[s] = round(sum(e["score"] or 0.0 for e in exs), 2)
    return out


def problems(rec: dict) -> list[str]:
    """What an instructor should look at for this student (empty when nothing)."""
    found = []
    not_graded = [e for e in rec["exercises"] if e["status"] == "not graded"]
    if not_graded:
        reason = not_graded[0]["message"].removeprefix("not graded: ")[:160]
        found.append(
            f"not graded: {', '.join(e['key'] for e in not_graded[:6])}{' ...' if len(not_graded) > 6 else ''}"
            f" ({reason})"
        )
    missing = sorted({e["set"] for e in rec["exercises"] if e["status"] == "missing"})
    if missing:
        found.append(f"missing sets: {', '.join(m[:2] for m in missing)}")
    for note in rec["notes"]:
        if "is lesson" in note or "is present" in note or "link" in note or "not searched" in note:
            found.append(note)
    level = rec.get("level", "")
    if level and level != "bwrap":
        found.append(f"sandbox level {level}")
    return found


def _people(rec: dict, key: str) -> str:
    return "; ".join(p.get(key, "") for p in rec.get("people", []) if p.get(key))


# ----------------------------------------------------------------------------------------------------------
# Gradebooks


def _set_header(s: str) -> str:
    return f"{s} ({sum(ex.points for ex in exercises_of(s))})"


def _fmt(x: float | None) -> str:
    return "" if x is None else f"{x:g}"


def gradebook_rows(records: list[dict]) -> list[dict[str, str]]:
    rows = []
    for rec in records:
        scores = set_scores(rec)
        complete = all(v is not None for v in scores.values())
        total = round(sum(v for v in scores.values() if v is not None), 2) if complete else None
        max_total = sum(ex.points for ex in BY_KEY.values())
        row = {
            "student": rec["student"],
            "name": _people(rec, "name"),
            "sid": _people(rec, "sid"),
            "email": _people(rec, "email"),
            "source": rec["source"],
        }
        row.update({_set_header(s): _fmt(v) for s, v in scores.items()})
        row.update(
            {
                "total": _fmt(total),
                "max": f"{max_total:g}",
                "percent": "" if total is None else f"{100 * total / max_total:.1f}",
                "graded_at": rec.get("graded_at", ""),
                "sandbox": rec.get("level", ""),
                "seed": str(rec["seed"]),
                "status": rec["status"],
                "problems": " | ".join(problems(rec)),
                "files": " ".join(f"{k[:2]}={v}" for k, v in rec["files"].items()),
            }
        )
        rows.append(row)
    return rows


def _csv(rows: list[dict[str, str]], header: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=header, lineterminator="\r\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k, "")) for k in header})
    return buf.getvalue()


def _cell(text: str) -> str:
    """A CSV cell that a spreadsheet will not run as a formula (ids and notes come from submissions)."""
    text = _plain(text).replace("\n", " ")
    return "'" + text if text[:1] in ("=", "+", "-", "@") and not re.fullmatch(r"-?\d+(\.\d+)?", text) else text


def read_roster(path: Path, key: str) -> dict[str, dict[str, str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if rows and key not in rows[0]:
        raise ValueError(f"the roster {path} has no column {key!r} (columns: {', '.join(rows[0])})")
    return {row[key].strip(): row for row in rows if row.get(key, "").strip()}


CANVAS_IDENTITY = ("Student", "ID", "SIS User ID", "SIS Login ID", "Section")


def canvas_rows(records: list[dict], roster: dict[str, dict[str, str]] | None) -> list[dict[str, str]]:
    """Canvas's import rows. With a roster, a student it does not list is left out (Canvas could not match the
    row): :func:`unmatched` names them."""
    rows = []
    for rec, row in zip(records, gradebook_rows(records), strict=True):
        if roster is not None:
            found = roster.get(rec["student"]) or roster.get(row["email"]) or roster.get(row["sid"])
            if not found:
                continue
            ident = {k: found.get(k, "") for k in CANVAS_IDENTITY}
        else:
            ident = {
                "Student": "",
                "ID": "",
                "SIS User ID": row["sid"] or rec["student"],
                "SIS Login ID": "",
                "Section": "",
            }
        rows.append({**ident, **{_set_header(s): row[_set_header(s)] for s in EXERCISE_SETS}})
    return rows


def unmatched(records: list[dict], roster: dict[str, dict[str, str]]) -> list[str]:
    """The students a roster does not list (by id, email or SID)."""
    rows = gradebook_rows(records)
    return [
        rec["student"]
        for rec, row in zip(records, rows, strict=True)
        if not (roster.get(rec["student"]) or roster.get(row["email"]) or roster.get(row["sid"]))
    ]


# ----------------------------------------------------------------------------------------------------------
# The class report as data


def class_report(records: list[dict], manifest: dict) -> dict:
    """Score distributions per set and exercise, and the named mistakes ranked by how many students made them."""
    n = len(records)
    levels: dict[str, int] = {}
    for rec in records:
        levels[rec.get("level") or "none"] = levels.get(rec.get("level") or "none", 0) + 1
    sets = []
    for s, title in EXERCISE_SETS.items():
        points = sum(ex.points for ex in exercises_of(s))
        scores = [v for rec in records if (v := set_scores(rec)[s]) is not None]
        submitted = sum(
            1 for rec in records if any(e["set"] == s and e["status"] != "missing" for e in rec["exercises"])
        )
        sets.append(
            {
                "set": s,
                "title": title,
                "points": points,
                "submitted": submitted,
                "graded": len(scores),
                "mean": round(sum(scores) / len(scores), 2) if scores else None,
                "full_marks": sum(1 for v in scores if v >= points),
                "histogram": _histogram(scores, points),
            }
        )
    exercises = []
    for ex in BY_KEY.values():
        rows = [(rec["student"], e) for rec in records for e in rec["exercises"] if e["key"] == ex.key]
        counts = {c: 0 for c in CATEGORIES}
        mistakes: dict[str, list[str]] = {}
        others: dict[str, list[str]] = {}
        for student, e in rows:
            cat = category(e)
            counts[cat] += 1
            if cat == "named mistake" or (e["mistakes"] and cat != "full marks"):
                for hint in e["mistakes"]:
                    mistakes.setdefault(hint, []).append(student)
            elif cat == "other error":
                others.setdefault(_first_message(e["message"]), []).append(student)
        graded = [e["score"] for _, e in rows if e["status"] == "graded"]
        exercises.append(
            {
                "key": ex.key,
                "set": ex.set,
                "entry": ex.entry,
                "title": ex.title,
                "points": ex.points,
                "mean": round(sum(graded) / len(graded), 2) if graded else None,
                "outcomes": counts,
                "mistakes": [
                    {"hint": hint, "count": len(who), "students": sorted(who)}
                    for hint, who in sorted(mistakes.items(), key=lambda kv: (-len(kv[1]), kv[0]))
                ],
                "other_errors": [
                    {"message": msg, "count": len(who), "students": sorted(who)}
                    for msg, who in sorted(others.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:5]
                ],
            }
        )
    ranked = sorted(
        (
            {"exercise": ex["key"], "entry": ex["entry"], "hint": m["hint"], "count": m["count"]}
            for ex in exercises
            for m in ex["mistakes"]
        ),
        key=lambda m: (-m["count"], m["exercise"], m["hint"]),
    )
    totals = [
        sum(v for v in set_scores(rec).values() if v is not None)
        for rec in records
        if all(v is not None for v in set_scores(rec).values())
    ]
    max_total = sum(ex.points for ex in BY_KEY.values())
    return {
        "students": n,
        "seed": manifest["seed"],
        "grader": manifest["grader"],
        "layout": manifest.get("layout", ""),
        "sandbox_levels": dict(sorted(levels.items())),
        "max_total": max_total,
        "total_histogram": _histogram(totals, max_total, bins=10),
        "sets": sets,
        "exercises": exercises,
        "top_mistakes": ranked[:15],
        "problems": [{"student": rec["student"], "problems": p} for rec in records if (p := problems(rec))],
        "class_notes": manifest.get("class_notes", []),
    }


def _first_message(message: str) -> str:
    text = message.split(" [check:", 1)[0]
    text = re.sub(r"-?\d+(\.\d+)?(e-?\d+)?", "#", text)  # group messages that differ only in numbers
    return text[:200]


def _histogram(values: list[float], top: float, bins: int | None = None) -> list[dict]:
    """Counts of ``values`` in equal bins over [0, top] (one bin per point for small totals); the last bin holds
    ``top`` itself."""
    if bins is None:
        bins = max(1, int(top)) if top <= 20 else 10
    width = top / bins if top else 1.0
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v / width + 1e-9)))] += 1
    return [{"from": round(i * width, 2), "to": round((i + 1) * width, 2), "count": c} for i, c in enumerate(counts)]


# ----------------------------------------------------------------------------------------------------------
# Figures (inline SVG) and the HTML, Markdown and JSON twins


_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _plain(text) -> str:
    """Text from a submission without control characters or bidirectional overrides (which could disguise it)."""
    return _UNSAFE.sub("", str(text))


def _esc(text) -> str:
    return html.escape(_plain(text), quote=True)


def svg_histogram(hist: list[dict], title: str, xlabel: str, width: int = 360, height: int = 200) -> str:
    left, bottom, top, right = 42, 38, 24, 10
    pw, ph = width - left - right, height - top - bottom
    peak = max([h["count"] for h in hist] + [1])
    bw = pw / max(1, len(hist))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-weight="bold">{_esc(title)}</text>',
        f'<line x1="{left}" y1="{top + ph}" x2="{left + pw}" y2="{top + ph}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + ph}" stroke="#333"/>',
    ]
    for tick in sorted({0, peak // 2, peak}):
        y = top + ph - ph * tick / peak
        parts.append(f'<text x="{left - 5}" y="{y + 4:.1f}" text-anchor="end">{tick}</text>')
        parts.append(f'<line x1="{left - 3}" y1="{y:.1f}" x2="{left}" y2="{y:.1f}" stroke="#333"/>')
    step = max(1, -(-len(hist) // 6))  # at most about six labels on the x axis
    for i, h in enumerate(hist):
        bh = ph * h["count"] / peak
        x = left + i * bw
        parts.append(
            f'<rect x="{x + 1:.1f}" y="{top + ph - bh:.1f}" width="{max(1.0, bw - 2):.1f}" height="{bh:.1f}" '
            f'fill="#3949ab"><title>{h["from"]:g}–{h["to"]:g}: {h["count"]} students</title></rect>'
        )
        if i % step == 0:
            parts.append(f'<text x="{x:.1f}" y="{top + ph + 13}" text-anchor="middle">{h["from"]:.3g}</text>')
    if (len(hist) - 1) % step:
        parts.append(f'<text x="{left + pw:.1f}" y="{top + ph + 13}" text-anchor="middle">{hist[-1]["to"]:.3g}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 4}" text-anchor="middle">{_esc(xlabel)}</text>')
    parts.append(
        f'<text x="11" y="{top + ph / 2}" text-anchor="middle" '
        f'transform="rotate(-90 11 {top + ph / 2})">students</text>'
    )
    parts.append("</svg>")
    return "".join(parts)


def svg_outcomes(exercises: list[dict], n: int, width: int = 900) -> str:
    """A stacked bar per exercise: how many students got full marks, a named mistake, another error, ..."""
    row, left, top = 16, 190, 34
    height = top + row * len(exercises) + 40
    pw = width - left - 20
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="outcome of every exercise" font-family="sans-serif" font-size="11">',
        f'<text x="{width / 2}" y="14" text-anchor="middle" font-weight="bold">'
        f"Outcome of each exercise ({n} students)</text>",
    ]
    x = left
    for cat in CATEGORIES:  # the legend
        parts.append(f'<rect x="{x}" y="20" width="10" height="10" fill="{COLOURS[cat]}"/>')
        parts.append(f'<text x="{x + 13}" y="29">{cat}</text>')
        x += 13 + 6.5 * len(cat) + 16
    for i, ex in enumerate(exercises):
        y = top + i * row
        parts.append(
            f'<text x="{left - 6}" y="{y + 11}" text-anchor="end">{_esc(ex["key"])} {_esc(ex["entry"][:22])}</text>'
        )
        x = float(left)
        for cat in CATEGORIES:
            c = ex["outcomes"][cat]
            if not c:
                continue
            w = pw * c / max(1, n)
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 2}" width="{w:.1f}" height="{row - 4}" fill="{COLOURS[cat]}">'
                f"<title>{_esc(ex['key'])}: {c} {cat}</title></rect>"
            )
            x += w
    axis_y = top + row * len(exercises) + 4
    parts.append(f'<line x1="{left}" y1="{axis_y}" x2="{left + pw}" y2="{axis_y}" stroke="#333"/>')
    for k in range(5):
        frac = k / 4
        parts.append(
            f'<text x="{left + pw * frac:.1f}" y="{axis_y + 13}" text-anchor="middle">{round(n * frac, 1):g}</text>'
        )
    parts.append(f'<text x="{left + pw / 2}" y="{axis_y + 30}" text-anchor="middle">students</text>')
    parts.append("</svg>")
    return "".join(parts)


CSS = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:1.5em auto;padding:0 1em;color:#222}
h1{font-size:1.6em} h2{margin-top:1.6em;border-bottom:1px solid #ccc} h3{margin-bottom:.3em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;
vertical-align:top;font-size:.92em} th{background:#f2f2f2} .num{text-align:right}
.figs{display:flex;flex-wrap:wrap;gap:8px} .who{color:#555;font-size:.85em} .meta{color:#444}
"""


def _students_list(who: list[str], limit: int = 30) -> str:
    shown = ", ".join(who[:limit])
    return shown + (f" and {len(who) - limit} more" if len(who) > limit else "")


def to_html(data: dict) -> str:
    e = _esc
    out = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; style-src 'unsafe-inline'; "
        'img-src data:">',
        "<title>Class report: attention course exercise sets</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>Class report: attention course exercise sets</h1>",
        f"<p class='meta'>{data['students']} students · seed {e(data['seed'])} · grader {e(data['grader'])} · "
        f"layout {e(data['layout'])} · sandbox levels "
        + ", ".join(f"{e(k)}: {v}" for k, v in data["sandbox_levels"].items())
        + "</p>",
        "<h2>Totals and sets</h2><div class='figs'>",
        svg_histogram(data["total_histogram"], "Total points (students graded on every set)", "points"),
    ]
    for s in data["sets"]:
        if s["submitted"]:
            out.append(svg_histogram(s["histogram"], f"{s['set']} ({s['points']} pts)", "points"))
    out.append("</div>")
    nobody = [s["set"] for s in data["sets"] if not s["submitted"]]
    if nobody:
        out.append(f"<p class='meta'>Submitted by nobody (no figure): {e(', '.join(nobody))}.</p>")
    out.append(
        "<table><tr><th>set</th><th>title</th><th class=num>submitted</th><th class=num>graded</th>"
        "<th class=num>mean (missing = 0)</th><th class=num>points</th><th class=num>full marks</th></tr>"
    )
    for s in data["sets"]:
        out.append(
            f"<tr><td>{e(s['set'])}</td><td>{e(s['title'])}</td><td class=num>{s['submitted']}</td>"
            f"<td class=num>{s['graded']}</td><td class=num>{'' if s['mean'] is None else s['mean']}</td>"
            f"<td class=num>{s['points']}</td><td class=num>{s['full_marks']}</td></tr>"
        )
    out.append("</table>")
    out.append("<h2>Exercises</h2>")
    submitted = {s["set"] for s in data["sets"] if s["submitted"]}
    out.append(svg_outcomes([x for x in data["exercises"] if x["set"] in submitted], data["students"]))
    out.append("<h2>The class's most common mistakes</h2>")
    if data["top_mistakes"]:
        out.append(
            "<table><tr><th class=num>students</th><th>exercise</th><th>mistake (the hint students saw)</th></tr>"
        )
        for m in data["top_mistakes"]:
            out.append(
                f"<tr><td class=num>{m['count']}</td><td>{e(m['exercise'])} <code>{e(m['entry'])}</code></td>"
                f"<td>{e(m['hint'])}</td></tr>"
            )
        out.append("</table>")
    else:
        out.append("<p>No known mistake was diagnosed.</p>")
    out.append("<h2>Mistakes per exercise</h2>")
    for ex in data["exercises"]:
        if not ex["mistakes"] and not ex["other_errors"]:
            continue
        o = ex["outcomes"]
        out.append(
            f"<h3>{e(ex['key'])} <code>{e(ex['entry'])}</code> ({ex['points']} pts)</h3><p class='meta'>"
            + " · ".join(f"{e(k)}: {v}" for k, v in o.items() if v)
            + (f" · mean {ex['mean']}" if ex["mean"] is not None else "")
            + "</p><table><tr><th class=num>students</th><th>named mistake (hint)</th><th>who</th></tr>"
        )
        for m in ex["mistakes"]:
            out.append(
                f"<tr><td class=num>{m['count']}</td><td>{e(m['hint'])}</td>"
                f"<td class=who>{e(_students_list(m['students']))}</td></tr>"
            )
        for m in ex["other_errors"]:
            out.append(
                f"<tr><td class=num>{m['count']}</td><td><i>no named mistake:</i> {e(m['message'])}</td>"
                f"<td class=who>{e(_students_list(m['students']))}</td></tr>"
            )
        out.append("</table>")
    out.append("<h2>Problems to look at</h2>")
    if data["problems"]:
        out.append("<table><tr><th>student</th><th>problems</th></tr>")
        for p in data["problems"]:
            out.append(f"<tr><td>{e(p['student'])}</td><td>{'<br>'.join(e(x) for x in p['problems'])}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>None.</p>")
    for note in data["class_notes"]:
        out.append(f"<p class='meta'>note: {e(note)}</p>")
    out.append("</body></html>\n")
    return "\n".join(out)


def _md(text) -> str:
    """Text for a Markdown table cell: no pipes, newlines, HTML or link/image syntax from the data."""
    text = html.escape(_plain(text), quote=False).replace("\n", " ")
    return re.sub(r"([\\|`*_\[\]!#])", r"\\\1", text)


def to_markdown(data: dict) -> str:
    lines = [
        "# Class report: attention course exercise sets",
        "",
        f"{data['students']} students · seed {data['seed']} · grader {data['grader']} · layout {_md(data['layout'])} · "
        "sandbox levels " + ", ".join(f"{_md(k)}: {v}" for k, v in data["sandbox_levels"].items()),
        "",
        "## Sets",
        "",
        "| set | submitted | graded | mean (missing = 0) | points | full marks | students per point bin |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for s in data["sets"]:
        dist = " ".join(str(h["count"]) for h in s["histogram"])
        lines.append(
            f"| {_md(s['set'])} | {s['submitted']} | {s['graded']} | {'' if s['mean'] is None else s['mean']} | "
            f"{s['points']} | {s['full_marks']} | {dist} |"
        )
    lines += ["", "## Exercises", "", "| exercise | " + " | ".join(CATEGORIES) + " | mean |", "|---|" + "---:|" * 7]
    for ex in data["exercises"]:
        lines.append(
            f"| {ex['key']} {_md(ex['entry'])} | "
            + " | ".join(str(ex["outcomes"][c]) for c in CATEGORIES)
            + f" | {'' if ex['mean'] is None else ex['mean']} |"
        )
    lines += ["", "## The class's most common mistakes", ""]
    if data["top_mistakes"]:
        lines += ["| students | exercise | mistake (hint) |", "|---:|---|---|"]
        lines += [
            f"| {m['count']} | {m['exercise']} {_md(m['entry'])} | {_md(m['hint'])} |" for m in data["top_mistakes"]
        ]
    else:
        lines.append("No known mistake was diagnosed.")
    lines += ["", "## Mistakes per exercise"]
    for ex in data["exercises"]:
        if not ex["mistakes"] and not ex["other_errors"]:
            continue
        lines += ["", f"### {ex['key']} {_md(ex['entry'])} ({ex['points']} pts)", ""]
        lines += ["| students | mistake | who |", "|---:|---|---|"]
        lines += [f"| {m['count']} | {_md(m['hint'])} | {_md(_students_list(m['students']))} |" for m in ex["mistakes"]]
        lines += [
            f"| {m['count']} | no named mistake: {_md(m['message'])} | {_md(_students_list(m['students']))} |"
            for m in ex["other_errors"]
        ]
    lines += ["", "## Problems to look at", ""]
    if data["problems"]:
        lines += ["| student | problems |", "|---|---|"]
        lines += [f"| {_md(p['student'])} | {'; '.join(_md(x) for x in p['problems'])} |" for p in data["problems"]]
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def write_class_outputs(
    out: Path,
    records: list[dict],
    manifest: dict,
    *,
    roster: Path | None = None,
    roster_key: str = "SIS Login ID",
    complete: bool = True,
) -> None:
    """gradebook.csv, gradebook-canvas.csv and class-report.{html,md,json} in ``out`` (records sorted by id)."""
    records = sorted(records, key=lambda r: r["student"])
    rows = gradebook_rows(records)
    header = list(rows[0]) if rows else ["student"]
    names = read_roster(roster, roster_key) if roster else None
    missing = unmatched(records, names) if names is not None else []
    if missing:
        manifest = {
            **manifest,
            "class_notes": [
                *manifest.get("class_notes", []),
                f"not in the roster, so left out of gradebook-canvas.csv: {', '.join(missing)}",
            ],
        }
    data = class_report(records, manifest)
    canvas = canvas_rows(records, names)
    canvas_header = [*CANVAS_IDENTITY, *(_set_header(s) for s in EXERCISE_SETS)]
    files = {
        "gradebook.csv": _csv(rows, header),
        "gradebook-canvas.csv": _csv(canvas, canvas_header),
        "class-report.json": json.dumps(data, indent=1, sort_keys=True) + "\n",
        "class-report.md": to_markdown(data),
        "class-report.html": to_html(data),
    }
    for name, text in files.items():
        report_files.write_file(out / name, text)
