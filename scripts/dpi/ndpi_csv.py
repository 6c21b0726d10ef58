#!/usr/bin/env python3
"""Turns ndpiReader's per-flow CSV (-C) into the classifier CSV that score.py reads.

usage: ndpi_csv.py MAPPING.csv PCAP_NAME NDPI.csv >> OUT.csv
nDPI's protocol name (`Master.App` or `App`) goes through the corpus mapping
(mapping.csv, DROP or missing names count as Unknown); `a` is the flow's
source as ndpiReader reports it. ndpiReader 4.2 prints some IPv6 addresses
malformed (two "::"); those flows are left out and count as missing.
"""

import csv
import ipaddress
import sys


def main():
    mapping_path, pcap, ndpi_path = sys.argv[1:4]
    with open(mapping_path, newline="") as f:
        mapping = {r["ndpi_name"]: r["category"] for r in csv.DictReader(f)}
    out = csv.writer(sys.stdout, lineterminator="\n")
    with open(ndpi_path, newline="", encoding="utf-8", errors="replace") as f:
        header = f.readline().lstrip("#").strip().split(",")
        for row in csv.DictReader(f, fieldnames=header):
            proto = {"6": "TCP", "17": "UDP"}.get(row["protocol"])
            if proto is None:
                continue
            try:
                ipaddress.ip_address(row["src_ip"])
                ipaddress.ip_address(row["dst_ip"])
            except ValueError:
                continue
            name = row["ndpi_proto"]
            category = mapping.get(name)
            if category is None and "." in name:
                master, app = name.split(".", 1)
                category = mapping.get(app) or mapping.get(master)
            if category in (None, "DROP"):
                category = "Unknown"
            out.writerow([pcap, proto, row["src_ip"], row["src_port"], row["dst_ip"],
                          row["dst_port"], category, name])


if __name__ == "__main__":
    main()
