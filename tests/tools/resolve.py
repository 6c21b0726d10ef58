#!/usr/bin/env python3
"""Asks a DNS server for a name's IPv4 addresses, as a stub resolver does.

usage: resolve.py NAME SERVER [PORT]
Prints each address of the answer on a line of its own; exits 1 when there is none.
"""

import random
import socket
import struct
import sys


def query(name):
    ident = random.randrange(1 << 16)
    header = struct.pack("!HHHHHH", ident, 0x0100, 1, 0, 0, 0)
    labels = b"".join(bytes([len(l)]) + l.encode() for l in name.rstrip(".").split("."))
    return ident, header + labels + b"\0" + struct.pack("!HH", 1, 1)


def skip_name(msg, at):
    while True:
        n = msg[at]
        if n == 0:
            return at + 1
        if n & 0xC0 == 0xC0:
            return at + 2
        at += 1 + n


def addresses(msg, ident):
    got, flags, qd, an = struct.unpack("!HHHH", msg[:8])
    if got != ident or not flags & 0x8000 or flags & 0xF:
        return []
    at = 12
    for _ in range(qd):
        at = skip_name(msg, at) + 4
    found = []
    for _ in range(an):
        at = skip_name(msg, at)
        kind, _cls, _ttl, length = struct.unpack("!HHIH", msg[at:at + 10])
        at += 10
        if kind == 1 and length == 4:
            found.append(socket.inet_ntoa(msg[at:at + 4]))
        at += length
    return found


def main():
    name, server = sys.argv[1], sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else 53
    ident, msg = query(name)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(2)
        for _ in range(5):
            s.sendto(msg, (server, port))
            try:
                found = addresses(s.recv(4096), ident)
            except socket.timeout:
                continue
            for a in found:
                print(a)
            return 0 if found else 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
