#!/usr/bin/env python3
"""Proves the dashboards and alert rules against a real Prometheus.

    monitoring_check.py rules RULES_FILE FACTOR   # the rules with `for` divided by FACTOR
    monitoring_check.py run --prometheus URL --mpls SOCKET --since UNIX_TIME

`run` expects Prometheus to scrape the demo topology (scripts/demo.sh --keep)
with the shortened rules loaded. It degrades and then cuts the MPLS link
through its patronus-wan control socket, waits for HighPacketLoss and then
PathDown and BfdSessionDown to fire (for the MPLS paths and no others), and then sends every query of every dashboard and every
alert expression to Prometheus' HTTP API:

- a dashboard query must return at least one series somewhere in the run
  (a range query from --since to now), and a nodeGraph's nodes and edges
  must carry the fields the panel needs;
- an alert expression must evaluate, and every metric it names must have
  series (a healthy gateway leaves most conditions empty, so the firing
  ones are checked by name above);
- every metric any of them names must be exported by a running binary.

Metrics that this topology cannot produce are listed in EXPORTED_ELSEWHERE
with the reason and the file that proves a binary exports them (a golden
exposition or the exporter's source, each checked by its own tests).
Exits non-zero with every failure listed.
"""

import argparse
import json
import re
import socket
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]

# Metric prefix -> (why the demo cannot produce it, the file that shows a
# binary exports it).
EXPORTED_ELSEWHERE = {
    "patronus_operator_": (
        "the operator needs a Kubernetes API server, which does not run here",
        "operator/src/metrics.rs",
    ),
}

# The demo's MPLS paths, one per gateway.
MPLS_PATHS = ("branch:mpls->hq:mpls", "hq:mpls->branch:mpls")

# Grafana's built-in variables, as Grafana would expand them for a 1 s
# scrape interval; the dashboards' own variables select everything, and a
# comparison reaches back 20 s instead of minutes.
RATE_INTERVAL = "4s"
VARIABLES = {"site": ".*", "instance": ".*", "path_id": ".*", "before": "20s"}

METRIC = re.compile(r"\bpatronus_[a-z0-9_]+")
LABEL_VALUES = re.compile(r"^label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\)$")


def shorten_rules(path, factor):
    """The rules with every `for` divided by `factor` (at least 2 s)."""
    doc = yaml.safe_load(open(path))
    units = {"s": 1, "m": 60, "h": 3600}
    for group in doc["groups"]:
        group["interval"] = "1s"
        for rule in group["rules"]:
            if "for" in rule:
                m = re.fullmatch(r"(\d+)([smh])", rule["for"])
                if not m:
                    sys.exit(f"cannot shorten for: {rule['for']} of {rule.get('alert')}")
                seconds = int(m.group(1)) * units[m.group(2)]
                rule["for"] = f"{max(2, seconds // factor)}s"
    yaml.safe_dump(doc, sys.stdout, sort_keys=False)


class Prometheus:
    def __init__(self, url):
        self.url = url.rstrip("/")

    def get(self, path, **params):
        query = urllib.parse.urlencode(params, doseq=True)
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
                body = json.load(r)
        except urllib.error.HTTPError as e:
            body = json.load(e)
        if body.get("status") != "success":
            raise QueryError(f"{body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def range(self, expr, start, end):
        return self.get("/api/v1/query_range", query=expr, start=start, end=end, step="1s")["result"]

    def firing(self):
        """(alert name, path_id or "") of every firing alert."""
        return {
            (a["labels"]["alertname"], a["labels"].get("path_id", ""))
            for a in self.get("/api/v1/alerts")["alerts"]
            if a["state"] == "firing"
        }


class QueryError(Exception):
    pass


def wan(sock, command):
    """One command to a patronus-wan control socket; returns its answer."""
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(sock)
        s.sendall((command + "\n").encode())
        return s.makefile().readline().strip()


def eventually(what, check, timeout_s):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    sys.exit(f"FAIL: {what} within {timeout_s} s")


def expand(expr, range_s):
    expr = expr.replace("$__rate_interval", RATE_INTERVAL)
    expr = expr.replace("$__range", f"{range_s}s").replace("$__interval", "1s")
    for name, value in VARIABLES.items():
        expr = expr.replace(f"${name}", value)
    return expr


def dashboard_queries():
    """(dashboard file, panel title, panel type, refId, expr) of every query."""

    def panels(items):
        for p in items:
            yield p
            yield from panels(p.get("panels", []))

    for path in sorted((ROOT / "dashboards").glob("*.json")):
        d = json.load(open(path))
        for p in panels(d["panels"]):
            for t in p.get("targets", []):
                yield path.name, p["title"], p["type"], t["refId"], t["expr"]
        for a in d["annotations"]["list"]:
            if "expr" in a:
                yield path.name, f"annotation {a['name']}", "annotation", "", a["expr"]
        for v in d["templating"]["list"]:
            if v["type"] == "query":
                yield path.name, f"variable {v['name']}", "variable", "", v["definition"]


def alert_expressions():
    doc = yaml.safe_load(open(ROOT / "alerts/patronus.rules.yaml"))
    for group in doc["groups"]:
        for rule in group["rules"]:
            yield rule.get("alert") or rule.get("record"), rule["expr"]


def exempt(metric):
    return next((why for prefix, why in EXPORTED_ELSEWHERE.items() if metric.startswith(prefix)), None)


def run(args):
    prom = Prometheus(args.prometheus)
    failures = []

    eventually(
        "every target is scraped",
        lambda: (t := prom.get("/api/v1/targets")["activeTargets"]) and all(x["health"] == "up" for x in t),
        60,
    )
    print("ok: Prometheus scrapes", len(prom.get("/api/v1/targets")["activeTargets"]), "targets")

    # The MPLS paths lose a fifth of their probes, then go dark. Each
    # alert must fire for both ends' MPLS paths.
    def fires(alert):
        return lambda: {(alert, p) for p in MPLS_PATHS} <= prom.firing()

    print("mpls:", wan(args.mpls, "set both loss=20%"))
    eventually("HighPacketLoss fires for both MPLS paths while MPLS loses 20%", fires("HighPacketLoss"), 120)
    print("ok: HighPacketLoss fires for both MPLS paths while MPLS loses 20%")
    print("mpls:", wan(args.mpls, "set both blackhole=on"))
    eventually("PathDown fires for both MPLS paths once MPLS is cut", fires("PathDown"), 120)
    eventually("BfdSessionDown fires for both MPLS paths once MPLS is cut", fires("BfdSessionDown"), 60)
    firing = prom.firing()
    print("ok: PathDown fires for both MPLS paths once MPLS is cut; firing now:",
          ", ".join(sorted(f"{a}{{{p}}}" if p else a for a, p in firing)))
    # The crossed paths (MPLS to an internet endpoint) never answered: a
    # configuration matter, not an outage.
    for alert in ("PathDown", "BfdSessionDown"):
        down = {p for a, p in firing if a == alert}
        if down != set(MPLS_PATHS):
            failures.append(f"{alert} fires for {sorted(down)}, not just the cut MPLS paths")

    end = time.time()
    range_s = int(end - args.since) + 1
    seen_metrics = {}

    def metric_has_series(metric):
        if metric not in seen_metrics:
            seen_metrics[metric] = bool(prom.get("/api/v1/series", **{"match[]": metric, "start": args.since, "end": end}))
        return seen_metrics[metric]

    def check_metrics(where, expr):
        for metric in sorted(set(METRIC.findall(expr))):
            why = exempt(metric)
            if why:
                source = ROOT / why[1]
                base = re.sub(r"_(bucket|sum|count)$", "", metric)
                if base not in source.read_text():
                    failures.append(f"{where}: {metric} is not exported by any binary ({why[1]} does not name it)")
            elif not metric_has_series(metric):
                failures.append(f"{where}: no binary exported {metric} during the run")

    queries = 0
    node_ids = set()
    for board, title, kind, ref, expr in dashboard_queries():
        where = f"{board} / {title}" + (f" / {ref}" if ref else "")
        queries += 1
        check_metrics(where, expr)
        metrics = set(METRIC.findall(expr))
        if metrics and all(exempt(m) for m in metrics):
            continue
        if kind == "variable":
            m = LABEL_VALUES.match(expand(expr, range_s))
            if not m:
                failures.append(f"{where}: not a label_values() query: {expr}")
                continue
            series = prom.get("/api/v1/series", **{"match[]": m.group(1), "start": args.since, "end": end})
            if not any(m.group(2) in s for s in series):
                failures.append(f"{where}: no series of {m.group(1)} has a {m.group(2)} label")
            continue
        try:
            result = prom.range(expand(expr, range_s), args.since, end)
        except QueryError as e:
            failures.append(f"{where}: {e}")
            continue
        if not result:
            failures.append(f"{where}: no series: {expand(expr, range_s)}")
            continue
        if kind == "nodeGraph":
            need = {"nodes": {"id", "title", "color"}, "edges": {"id", "source", "target", "color"}}[ref]
            missing = [need - set(s["metric"]) for s in result if need - set(s["metric"])]
            if missing:
                failures.append(f"{where}: series without the fields {sorted(missing[0])}")
            if ref == "nodes":
                node_ids = {s["metric"]["id"] for s in result}
            else:
                ends = {s["metric"][k] for s in result for k in ("source", "target")}
                if ends - node_ids:
                    failures.append(f"{where}: edges end at nodes the nodes query lacks: {sorted(ends - node_ids)}")
    print(f"ok: {queries} dashboard queries, variables and annotations checked")

    rules = 0
    for name, expr in alert_expressions():
        rules += 1
        where = f"alert {name}"
        check_metrics(where, expr)
        try:
            prom.range(expand(expr, range_s), args.since, end)
        except QueryError as e:
            failures.append(f"{where}: {e}")
    print(f"ok: {rules} alert expressions evaluate")
    for prefix, (why, source) in EXPORTED_ELSEWHERE.items():
        print(f"note: {prefix}* checked against {source}, not live: {why}")

    print("mpls:", wan(args.mpls, "set both clear delay=5ms"))
    if failures:
        print("\n".join(f"FAIL: {f}" for f in failures), file=sys.stderr)
        sys.exit(1)
    print(f"ok: every dashboard query returned series; every metric named is exported ({len(seen_metrics)} live)")


def main():
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("rules")
    r.add_argument("file")
    r.add_argument("factor", type=int)
    c = sub.add_parser("run")
    c.add_argument("--prometheus", required=True)
    c.add_argument("--mpls", required=True)
    c.add_argument("--since", type=float, required=True)
    args = parser.parse_args()
    if args.command == "rules":
        shorten_rules(args.file, args.factor)
    else:
        run(args)


if __name__ == "__main__":
    main()
