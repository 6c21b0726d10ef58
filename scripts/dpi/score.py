#!/usr/bin/env python3
"""Scores a classifier's per-flow CSV against labelled flows.

Matching and metrics follow the corpus README: a prediction matches a label
when pcap, proto and the unordered endpoint pair are equal (addresses compared
as parsed IP addresses); labelled flows without a prediction count as wrong.

usage: score.py LABELS.csv PREDICTIONS.csv [--min-accuracy PCT] [--min-recall PCT]
                [--min-precision PCT] [--max-wrongly-named N] [--errors N]
                [--captures LIST]
Prints per-category recall and precision, the confusion matrix, accuracy by
the method that reached each verdict (when the predictions have a `method`
column) and the overall accuracy (last line). Exits 1 when a --min bar is not met.
--min-precision applies to the named categories, all but Web and Unknown: the
verdicts that say "a web session" and "nothing known" are where traffic goes
when nothing names it, and are scored by recall. A flow is wrongly named when
its verdict is a named category other than its label's; --max-wrongly-named
bounds their number. --captures scores only the labelled flows of the captures
LIST names (one file name per line; `#` starts a comment).
"""

import argparse
import collections
import csv
import ipaddress
import sys

CATEGORIES = ["Web", "Video", "VoIP", "Gaming", "FileTransfer", "Database",
              "DNS", "RemoteAccess", "Email", "Unknown"]


def flow_key(row):
    a = (ipaddress.ip_address(row["addr_a"]), int(row["port_a"]))
    b = (ipaddress.ip_address(row["addr_b"]), int(row["port_b"]))
    return (row["pcap"], row["proto"].upper(), frozenset([a, b]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("labels")
    ap.add_argument("predictions")
    ap.add_argument("--min-accuracy", type=float, default=0.0)
    ap.add_argument("--min-recall", type=float, default=0.0)
    ap.add_argument("--min-precision", type=float, default=0.0)
    ap.add_argument("--max-wrongly-named", type=int, default=None)
    ap.add_argument("--errors", type=int, default=0,
                    help="also list up to N misclassified flows")
    ap.add_argument("--captures", default=None,
                    help="score only the flows of the captures this file lists")
    args = ap.parse_args()

    with open(args.predictions, newline="") as f:
        predicted = {}
        for row in csv.DictReader(f):
            predicted.setdefault(flow_key(row), row)
    with open(args.labels, newline="") as f:
        labels = list(csv.DictReader(f))
    if args.captures:
        with open(args.captures) as f:
            listed = {line.split("#")[0].split()[0] for line in f
                      if line.split("#")[0].strip()}
        known = {label["pcap"] for label in labels}
        if listed - known:
            sys.exit(f"{args.captures}: no labelled flows for {sorted(listed - known)}")
        labels = [label for label in labels if label["pcap"] in listed]

    confusion = collections.defaultdict(collections.Counter)
    errors = []
    for label in labels:
        guess = predicted.get(flow_key(label))
        got = guess["category"] if guess else "missing"
        confusion[label["category"]][got] += 1
        if got != label["category"]:
            errors.append((label, guess))

    total = len(labels)
    correct = sum(confusion[c][c] for c in CATEGORIES)
    print("| category | flows | recall % | precision % |")
    print("|---|---:|---:|---:|")
    worst_recall = 100.0
    worst_precision = (100.0, None)
    for c in CATEGORIES:
        n = sum(confusion[c].values())
        if n == 0:
            continue
        recall = 100.0 * confusion[c][c] / n
        predicted_c = sum(confusion[l][c] for l in CATEGORIES)
        precision = 100.0 * confusion[c][c] / predicted_c if predicted_c else 100.0
        worst_recall = min(worst_recall, recall)
        if c not in ("Web", "Unknown") and precision < worst_precision[0]:
            worst_precision = (precision, c)
        print(f"| {c} | {n} | {recall:.1f} | {precision:.1f} |")
    print()
    cols = CATEGORIES + ["missing"]
    print("label \\ predicted | " + " | ".join(cols))
    for c in CATEGORIES:
        print(f"{c} | " + " | ".join(str(confusion[c][p]) for p in cols))
    by_method = collections.defaultdict(lambda: [0, 0])
    for label in labels:
        guess = predicted.get(flow_key(label))
        if guess and guess.get("method"):
            tally = by_method[guess["method"]]
            tally[0] += 1
            tally[1] += guess["category"] == label["category"]
    if by_method:
        print()
        print("| method | flows | accuracy % |")
        print("|---|---:|---:|")
        for method, (n, right) in sorted(by_method.items(), key=lambda kv: -kv[1][0]):
            print(f"| {method} | {n} | {100.0 * right / n:.1f} |")
    for label, guess in errors[: args.errors]:
        got = f"{guess['category']} ({guess['application']})" if guess else "missing"
        print(f"error: {label['pcap']} {label['proto']} {label['addr_a']}:{label['port_a']} -> "
              f"{label['addr_b']}:{label['port_b']} label {label['category']} ({label['application']}) got {got}")
    accuracy = 100.0 * correct / total if total else 0.0
    print()
    wrongly_named = sum(confusion[l][c] for l in CATEGORIES for c in CATEGORIES
                        if c not in ("Web", "Unknown") and c != l)
    print(f"wrongly named {wrongly_named}")
    named = f", lowest named-category precision {worst_precision[0]:.1f}% ({worst_precision[1]})" \
        if worst_precision[1] else ""
    print(f"accuracy {accuracy:.1f}% ({correct}/{total}), lowest category recall {worst_recall:.1f}%{named}")
    if accuracy < args.min_accuracy or worst_recall < args.min_recall \
            or worst_precision[0] < args.min_precision \
            or (args.max_wrongly_named is not None and wrongly_named > args.max_wrongly_named):
        print(f"below the bar: accuracy >= {args.min_accuracy}%, every recall >= {args.min_recall}%, "
              f"every named precision >= {args.min_precision}%, wrongly named <= {args.max_wrongly_named}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
