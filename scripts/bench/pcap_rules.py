#!/usr/bin/env python3
"""Forwarding rules for the benchmark's contenders, read from its capture.

The rules are derived from the frames themselves, so that every packet the
contender sees matches one of them, whatever generated the capture.

  pcap_rules.py em PCAP OUT_PORT
      l3fwd exact-match rules (--rule_ipv4 file format of DPDK 22.11):
      one per distinct IPv4 TCP/UDP 5-tuple, all sent to OUT_PORT:
      R<dst ip> <src ip> <dst port> <src port> <proto> <out port>
  pcap_rules.py ovs PCAP OUT_PORT SRC_MAC DST_MAC
      OpenFlow flows for ovs-ofctl add-flows: one route per distinct IPv4
      destination (a /32, as a router's host route), rewriting the Ethernet
      addresses, decrementing the TTL and sending to OUT_PORT; anything
      else is dropped.

Standard library only. Prints the rules on stdout, a count on stderr.
"""

import ipaddress
import struct
import sys

ETH_IPV4 = 0x0800
TCP, UDP = 6, 17


def frames(path):
    """Yields each frame's bytes of a classic (not pcapng) Ethernet capture."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24:
            sys.exit(f"{path}: not a pcap file")
        magic = struct.unpack("<I", head[:4])[0]
        if magic in (0xA1B2C3D4, 0xA1B23C4D):
            endian = "<"
        elif magic in (0xD4C3B2A1, 0x4D3CB2A1):
            endian = ">"
        else:
            sys.exit(f"{path}: not a classic pcap file (magic {magic:#x})")
        linktype = struct.unpack(endian + "I", head[20:24])[0]
        if linktype != 1:
            sys.exit(f"{path}: link type {linktype}, not Ethernet")
        while True:
            rec = f.read(16)
            if len(rec) < 16:
                return
            incl = struct.unpack(endian + "IIII", rec)[2]
            yield f.read(incl)


def ipv4_5tuples(path):
    """(src, dst, proto, sport, dport) of each IPv4 TCP/UDP frame, in order."""
    for frame in frames(path):
        if len(frame) < 14 + 20 or struct.unpack("!H", frame[12:14])[0] != ETH_IPV4:
            continue
        ip = frame[14:]
        ihl = (ip[0] & 0x0F) * 4
        if ip[0] >> 4 != 4 or ihl < 20 or len(ip) < ihl + 4:
            continue
        proto = ip[9]
        if proto not in (TCP, UDP):
            continue
        src = ipaddress.IPv4Address(ip[12:16])
        dst = ipaddress.IPv4Address(ip[16:20])
        sport, dport = struct.unpack("!HH", ip[ihl : ihl + 4])
        yield src, dst, proto, sport, dport


def unique(items):
    seen = set()
    for item in items:
        if item not in seen:
            seen.add(item)
            yield item


def main(argv):
    if len(argv) == 4 and argv[1] == "em":
        pcap, port = argv[2], int(argv[3])
        rules = list(unique(ipv4_5tuples(pcap)))
        print(f"# l3fwd exact-match rules for {pcap}: dst src dport sport proto port")
        for src, dst, proto, sport, dport in rules:
            print(f"R{dst} {src} {dport} {sport} {proto} {port}")
    elif len(argv) == 6 and argv[1] == "ovs":
        pcap, port, src_mac, dst_mac = argv[2], int(argv[3]), argv[4], argv[5]
        rules = list(unique(t[1] for t in ipv4_5tuples(pcap)))
        for dst in rules:
            print(
                f"table=0,priority=100,ip,nw_dst={dst}/32,"
                f"actions=mod_dl_src:{src_mac},mod_dl_dst:{dst_mac},dec_ttl,output:{port}"
            )
        print("table=0,priority=0,actions=drop")
    else:
        sys.exit(__doc__)
    if not rules:
        sys.exit(f"{pcap}: no IPv4 TCP/UDP frames")
    print(f"pcap_rules.py: {len(rules)} {argv[1]} rules from {pcap}", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
