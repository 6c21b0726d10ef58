"""Hostile traffic for a WireGuard listen port, from a test host.

junk HOST PORT                 malformed datagrams of every kind; prints how many
badmac HOST PORT N             N initiations whose MAC1 is wrong
flood HOST PORT PUBKEY S RATE  initiations with a valid MAC1 (anyone knowing the
                               public key can make them) for S seconds at RATE/s,
                               from many source ports; prints how many were sent
                               and how many cookie replies came back
replay IFACE HOST PORT N       capture N transport-data datagrams this host sends
                               to HOST:PORT on IFACE, resend them; prints N
"""
import base64
import hashlib
import os
import select
import socket
import struct
import sys
import time

INITIATION_LEN = 148


def udp(host):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_DGRAM)


def junk(host, port):
    cases = [
        b"",
        b"\x01",
        b"\x04\x00\x00",
        b"\x01\x00\x00\x00" + os.urandom(100),  # truncated initiation
        b"\x02\x00\x00\x00" + os.urandom(40),  # truncated response
        b"\x03\x00\x00\x00" + os.urandom(59),  # cookie reply one byte short
        b"\x04\x00\x00\x00" + os.urandom(20),  # data shorter than a tag
        b"\x09\x00\x00\x00" + os.urandom(60),  # unknown type
        b"\x01\x01\x00\x00" + os.urandom(INITIATION_LEN - 4),  # reserved bytes set
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(1400),
    ]
    with udp(host) as s:
        for c in cases:
            s.sendto(c, (host, port))
        # A data message for an index nobody gave out: well-formed, no session.
        s.sendto(b"\x04\x00\x00\x00" + struct.pack("<IQ", 0x7F123456, 1) + os.urandom(48), (host, port))
    print(len(cases), flush=True)


def badmac(host, port, n):
    with udp(host) as s:
        for _ in range(n):
            s.sendto(b"\x01\x00\x00\x00" + os.urandom(INITIATION_LEN - 4), (host, port))
    print(n, flush=True)


def initiation(mac1_key):
    body = b"\x01\x00\x00\x00" + os.urandom(4 + 32 + 48 + 28)
    mac1 = hashlib.blake2s(body, key=mac1_key, digest_size=16).digest()
    return body + mac1 + bytes(16)


def flood(host, port, public_b64, seconds, rate):
    public = base64.b64decode(public_b64)
    mac1_key = hashlib.blake2s(b"mac1----" + public).digest()
    sockets = [udp(host) for _ in range(16)]
    for s in sockets:
        s.setblocking(False)
    sent = cookies = 0
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        s = sockets[sent % len(sockets)]
        s.sendto(initiation(mac1_key), (host, port))
        sent += 1
        ahead = start + sent / rate - time.monotonic()
        if ahead > 0:
            readable, _, _ = select.select(sockets, [], [], ahead)
            for r in readable:
                try:
                    while True:
                        reply = r.recv(2048)
                        cookies += len(reply) == 64 and reply[0] == 3
                except BlockingIOError:
                    pass
    print(sent, cookies, flush=True)


def replay(iface, host, port, n):
    sniff = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
    sniff.bind((iface, 0))
    sniff.settimeout(20)
    captured = []
    while len(captured) < n:
        frame, addr = sniff.recvfrom(65535)
        if addr[2] != socket.PACKET_OUTGOING:
            continue
        ethertype = struct.unpack("!H", frame[12:14])[0]
        if ethertype == 0x0800:
            ihl = (frame[14] & 0x0F) * 4
            proto, l4 = frame[23], 14 + ihl
        elif ethertype == 0x86DD:
            proto, l4 = frame[20], 54
        else:
            continue
        if proto != 17:
            continue
        dport = struct.unpack("!H", frame[l4 + 2 : l4 + 4])[0]
        payload = frame[l4 + 8 :]
        if dport == port and payload[:1] == b"\x04":
            captured.append(payload)
    with udp(host) as s:
        for p in captured:
            s.sendto(p, (host, port))
    print(len(captured), flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "junk":
        junk(args[0], int(args[1]))
    elif cmd == "badmac":
        badmac(args[0], int(args[1]), int(args[2]))
    elif cmd == "flood":
        flood(args[0], int(args[1]), args[2], float(args[3]), float(args[4]))
    elif cmd == "replay":
        replay(args[0], args[1], int(args[2]), int(args[3]))
    else:
        sys.exit(__doc__)
