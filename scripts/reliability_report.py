#!/usr/bin/env python3
"""Renders RELIABILITY.md from the figures of one run of scripts/reliability.sh.

    scripts/reliability_report.py [OUT]     # default OUT: RELIABILITY.md

Reads target/reliability/figures.jsonl (one SUITE-FIGURES object per test, written by
scripts/reliability.sh), target/reliability/run.json (commit, date, profile, machine) and, when
fuzz/run wrote it, target/reliability/fuzz.jsonl. The prose comes from docs/reliability/*.md
(a `<!-- figures -->` line in a note is where its table goes) and the test descriptions from
docs/reliability/tests.json. Every figure in the output comes from those files: nothing is
typed by hand. A suite that printed no figures is shown as not run, never left out silently.
"""

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOTES = ROOT / "docs" / "reliability"
RUN_DIR = ROOT / "target" / "reliability"
MARK = "<!-- figures -->"


def load_jsonl(path):
    rows = []
    if not path.exists():
        return rows
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as e:
            sys.exit(f"{path}:{n}: not JSON: {e}")
    return rows


def num(v, key=""):
    if "code" in key.lower() and isinstance(v, int):
        return str(v)  # a close or status code, not a count
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.0f}" if v.is_integer() else f"{v:,.2f}"
    if isinstance(v, list):
        return ", ".join(num(x, key) for x in v)
    if isinstance(v, dict):
        return "; ".join(f"{k} {num(x, k)}" for k, x in v.items())
    if v is None:
        return ""
    return str(v)


def zero(v):
    """A count that must be 0, in bold so a reader's eye finds it."""
    return f"**{num(v)}**"


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def note(name, figures_md):
    text = (NOTES / name).read_text().rstrip() + "\n"
    if MARK in text:
        return text.replace(MARK, figures_md.rstrip())
    return text if not figures_md else text + "\n" + figures_md.rstrip() + "\n"


def not_run(suite):
    return f"_No figures from `{suite}` in this run (the suite failed to build, or was not run)._"


def faults(rows, names):
    if not rows:
        return not_run("faults")
    out = []
    for r in rows:
        injected = []
        for key, what in [
            ("nodeKills", "node SIGKILLs"),
            ("redisKills", "Redis SIGKILLs"),
            ("redisStops", "Redis SIGTERMs"),
            ("redisRestarts", "Redis restarts"),
            ("redisPauses", "pauses of 4 s"),
            ("sinkOutages", "sink outages of 4 s"),
        ]:
            if r.get(key):
                injected.append(f"{num(r[key])} {what}")
        deliveries = (
            f"{num(r.get('deliveriesExpected'))} / {num(r.get('deliveriesReceived'))} / "
            f"{zero(r.get('deliveriesLost'))}"
        )
        if r.get("deliveriesRecovered"):
            deliveries += f" ({num(r['deliveriesRecovered'])} recovered)"
        out.append(
            [
                names.get(r["test"], r["test"]),
                num(r.get("nodes")),
                ", ".join(injected) or "none",
                num(r.get("ordersAccepted")),
                zero(r.get("ordersLost")),
                zero(r.get("deadLetters")),
                f"{num(r.get('ordersRejected'))} / {num(r.get('ordersInvalid'))}",
                zero(r.get("validOrdersRejected")),
                f"{num(r.get('cancelsAccepted'))} / {zero(r.get('cancelsRefused'))}",
                num(r.get("ordersNotAccepted")),
                num(r.get("events")),
                deliveries,
                num(r.get("duplicateDeliveries")),
                num(r.get("subscriberResumes")),
                num(r.get("maxRssMiB")) + " MiB",
            ]
        )
    profile = rows[0].get("profile", "?")
    return (
        f"Profile `{profile}`:\n\n"
        + table(
            [
                "test",
                "nodes",
                "faults injected",
                "orders accepted",
                "lost",
                "dead letters",
                "rejected / invalid sent",
                "valid orders rejected",
                "cancels accepted / refused",
                "not accepted",
                "events",
                "deliveries expected / received / lost",
                "duplicate deliveries",
                "subscriber resumes",
                "max RSS per node",
            ],
            out,
        )
    )


def durability(rows):
    if not rows:
        return not_run("durability")
    out = []
    for r in rows:
        for run in r.get("runs", []):
            out.append(
                [
                    run.get("appendfsync"),
                    num(run.get("clients")),
                    num(run.get("accepted")),
                    num(run.get("accepted_after_restart")),
                    num(run.get("redis_kills")),
                    zero(run.get("lost")),
                ]
            )
    return table(
        ["appendfsync", "clients", "orders accepted", "after the restart", "Redis SIGKILLs", "lost"],
        out,
    )


def counted(rows, names, suite, count_key, count_label, bad_key, bad_label):
    if not rows:
        return not_run(suite)
    # In the order the descriptions are listed (tests.json), then any other test by name.
    order = {name: i for i, name in enumerate(names)}
    rows = sorted(rows, key=lambda r: (order.get(r["test"], len(order)), r["test"]))
    out = [
        [names.get(r["test"], f"`{r['test']}`"), num(r.get(count_key)), zero(r.get(bad_key))]
        for r in rows
    ]
    return table(["test", count_label, bad_label], out)


def hardening(rows):
    """Issue 12's items in order: each item's notes (item-<N>.md, item-<N>-<part>.md), then the
    figures its tests printed. Item 9 is the issue's "tests that prove less than their names"."""
    parts = [note("hardening.md", "")]
    by_item = {}
    for r in rows:
        by_item.setdefault(r.get("item"), []).append(r)
    notes_by_item = {}
    for path in sorted(NOTES.glob("item-*.md")):
        m = re.match(r"item-(\d+)", path.stem)
        if m:
            notes_by_item.setdefault(int(m.group(1)), []).append(path)
    for item in sorted(set(notes_by_item) | {i for i in by_item if isinstance(i, int)}):
        # The item's main note (item-<N>.md) first, then its parts by name.
        paths = sorted(notes_by_item.get(item, []), key=lambda p: (p.stem != f"item-{item}", p.stem))
        for path in paths:
            parts.append(note(path.name, ""))
        if not paths:
            parts.append(f"### Item {item}\n")
        tests = by_item.get(item, [])
        if tests:
            out = []
            for r in tests:
                rest = {k: v for k, v in r.items() if k not in ("suite", "item", "test")}
                out.append([f"`{r['test']}`", num(rest)])
            parts.append(table(["test", "figures"], out) + "\n")
        else:
            parts.append(not_run(f"hardening (item {item})") + "\n")
    return "\n".join(parts)


def fuzz(rows):
    if not rows:
        return (
            "_`fuzz/run` was not run with this report (it needs nightly and cargo-fuzz; it writes "
            "`target/reliability/fuzz.jsonl`). Earlier runs: "
            "[docs/reliability/history.md](docs/reliability/history.md)._"
        )
    head = rows[0]
    out = [
        [r["target"], num(r.get("runs")), num(r.get("execsPerSecond")), num(r.get("corpus")),
         zero(r.get("crashes"))]
        for r in rows
    ]
    return (
        f"`fuzz/run {head.get('seconds', '?')}` at `{head.get('commit', '?')}`, "
        f"{head.get('date', '?')}:\n\n"
        + table(["target", "runs", "execs/s", "corpus", "crashes"], out)
    )


def main():
    out_path = ROOT / (sys.argv[1] if len(sys.argv) > 1 else "RELIABILITY.md")
    figures = load_jsonl(RUN_DIR / "figures.jsonl")
    run_file = RUN_DIR / "run.json"
    run = json.loads(run_file.read_text()) if run_file.exists() else {}
    names = json.loads((NOTES / "tests.json").read_text())
    suites = {}
    for r in figures:
        suites.setdefault(r.get("suite"), []).append(r)

    doc = [note("intro.md", "")]
    doc.append(
        f"This run: profile `{run.get('profile', '?')}`, Herald `{run.get('commit', '?')}`, "
        f"{run.get('date', '?')}. Machine: {run.get('machine', '?')}; Herald and the tests in "
        "debug builds, as `cargo test` builds them.\n"
    )
    doc.append(note("faults.md", faults(suites.get("faults", []), names["faults"])))
    doc.append(note("durability.md", durability(suites.get("durability", []))))
    doc.append(
        note(
            "bad_input.md",
            counted(suites.get("bad_input", []), names["bad_input"], "bad_input",
                    "inputs", "bad inputs tried", "half_applied", "half-applied"),
        )
    )
    doc.append(
        note(
            "security.md",
            counted(suites.get("security", []), names["security"], "security",
                    "cases", "cases", "leaks", "leaks"),
        )
    )
    doc.append(hardening(suites.get("hardening", [])))
    doc.append(note("fuzz.md", fuzz(load_jsonl(RUN_DIR / "fuzz.jsonl"))))
    doc.append(note("not-covered.md", ""))
    text = (
        "<!-- Generated by scripts/reliability_report.py from target/reliability (run "
        "scripts/reliability.sh); edit the prose in docs/reliability/, not here. -->\n\n"
        + "\n".join(d.rstrip() + "\n" for d in doc)
    )
    # The intro's title goes first, above the generated-file comment.
    title, _, rest = text.partition("\n\n")
    intro_title = rest.split("\n", 1)[0]
    body = rest.split("\n", 1)[1]
    out_path.write_text(intro_title + "\n\n" + title + "\n" + body)
    print(f"reliability: wrote {out_path} from {len(figures)} figures")


if __name__ == "__main__":
    main()
