#!/usr/bin/env python3
"""One summary of a fleet run: the per-host files the sapari_agent role wrote
(<report_dir>/<host>.json) as a table on stdout and, with --json, one JSON document.

    fleet_report.py REPORT_DIR [--json FILE] [--hosts a,b,c]

--hosts names every host the run was meant to reach: one without a file is listed as
"no report" (it failed before the agent ran, e.g. unreachable). Exit 0 whatever the hosts did
(ansible-playbook's own exit code says whether the run failed); 2 on bad arguments or files.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# Where a host's commit-confirmed change stands, as the role records it.
CONFIRM_STATES = ("none", "pending", "confirmed", "unconfirmed")


def host_summary(doc: dict) -> dict:
    """The fleet's view of one host file."""
    report = doc.get("report") or {}
    resources = report.get("resources") or []
    check = bool(doc.get("check_mode"))
    want = "would_change" if check else "changed"
    changed = [r["name"] for r in resources if r.get("status") == want]
    failed = [r["name"] for r in resources if r.get("status") == "failed"]
    confirm = doc.get("confirm") or "none"
    if confirm not in CONFIRM_STATES:
        raise ValueError(f"confirm is {confirm!r}, not one of {', '.join(CONFIRM_STATES)}")
    if doc.get("failed") or failed or confirm == "unconfirmed":
        result = "failed"
    elif changed:
        result = "would_change" if check else "changed"
    else:
        result = "unchanged"
    return {
        "host": doc["host"],
        "result": result,
        "check_mode": check,
        "changed_resources": changed,
        "failed_resources": failed,
        "errors": [f"{r['name']}: {r.get('error')}" for r in resources if r.get("status") == "failed"],
        "confirm": confirm,
        "confirm_deadline": doc.get("confirm_deadline"),
        "msg": doc.get("msg") or "",
    }


def fleet(hosts: list[dict], expected: list[str]) -> dict:
    """The summary of every host: who changed, failed, waits for confirmation, and which
    resources changed where."""
    seen = {h["host"] for h in hosts}
    missing = sorted(set(expected) - seen)
    by_resource: dict[str, list[str]] = {}
    for h in hosts:
        for r in h["changed_resources"]:
            by_resource.setdefault(r, []).append(h["host"])

    def named(pred):
        return sorted(h["host"] for h in hosts if pred(h))

    return {
        "hosts": len(hosts) + len(missing),
        "changed": named(lambda h: h["result"] in ("changed", "would_change")),
        "unchanged": named(lambda h: h["result"] == "unchanged"),
        "failed": named(lambda h: h["result"] == "failed"),
        "pending_confirmation": named(lambda h: h["confirm"] == "pending"),
        "unconfirmed": named(lambda h: h["confirm"] == "unconfirmed"),
        "confirmed": named(lambda h: h["confirm"] == "confirmed"),
        "no_report": missing,
        "resources_changed": {k: sorted(v) for k, v in sorted(by_resource.items())},
        "per_host": sorted(hosts, key=lambda h: h["host"]),
    }


def table(f: dict) -> str:
    rows = [("host", "result", "confirm", "resources")]
    for h in f["per_host"]:
        what = ", ".join(h["changed_resources"]) or "-"
        if h["failed_resources"]:
            what += " | failed: " + ", ".join(h["failed_resources"])
        confirm = h["confirm"]
        if confirm in ("pending", "unconfirmed") and h["confirm_deadline"]:
            confirm += f" (rolls back at {h['confirm_deadline']})"
        rows.append((h["host"], h["result"], confirm, what))
    for m in f["no_report"]:
        rows.append((m, "no report", "-", "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r[:3], widths)) + "  " + r[3] for r in rows]
    lines.append(
        f"{f['hosts']} hosts: {len(f['changed'])} changed, {len(f['unchanged'])} unchanged, "
        f"{len(f['failed'])} failed, {len(f['pending_confirmation'])} pending confirmation, "
        f"{len(f['unconfirmed'])} unconfirmed (rolling back), {len(f['no_report'])} without a report"
    )
    for h in f["per_host"]:
        for e in h["errors"]:
            lines.append(f"{h['host']}: {e}")
        if h["msg"] and not h["errors"]:
            lines.append(f"{h['host']}: {h['msg']}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report_dir", type=Path)
    ap.add_argument("--json", type=Path, help="also write the summary here")
    ap.add_argument("--hosts", default="", help="comma-separated hosts the run was meant to reach")
    a = ap.parse_args(argv)
    hosts = []
    try:
        for p in sorted(a.report_dir.glob("*.json")):
            if a.json and p.resolve() == a.json.resolve():
                continue
            hosts.append(host_summary(json.loads(p.read_text())))
    except (OSError, ValueError, KeyError) as e:
        print(f"fleet_report.py: {a.report_dir}: {e}", file=sys.stderr)
        return 2
    f = fleet(hosts, [h for h in a.hosts.split(",") if h])
    print(table(f))
    if a.json:
        try:
            a.json.parent.mkdir(parents=True, exist_ok=True)
            a.json.write_text(json.dumps(f, indent=2) + "\n")
        except OSError as e:
            print(f"fleet_report.py: {a.json}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
