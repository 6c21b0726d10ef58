"""A voice-like RTP stream (G.711: 50 packets a second of 160 B) and its
receiver, which measures each packet's one-way delay. Sender and receiver
run in network namespaces of one machine, so they share its monotonic clock.

send HOST PORT SECONDS   send for SECONDS; print the count sent
recv PORT SECONDS        receive until SECONDS after the first packet; print
                         "received R lost L p50_ms X p99_ms Y max_ms Z ef E",
                         E the packets that arrived marked DSCP 46 (EF, the
                         voice mark of RFC 3246)
"""
import socket
import struct
import sys
import time

PPS = 50
SSRC = 0x5EED_CA11
HEADER = struct.Struct("!BBHII")  # V=2, payload type 0 (PCMU), seq, timestamp, SSRC
PAYLOAD = 160
DSCP_EF = 46


def send(host, port, seconds):
    total = int(PPS * seconds)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((host, port))
        start = time.monotonic()
        for seq in range(total):
            due = start + seq / PPS
            while (now := time.monotonic()) < due:
                time.sleep(min(due - now, 0.002))
            packet = HEADER.pack(0x80, 0, seq & 0xFFFF, seq * 160, SSRC)
            packet += struct.pack("!QQ", seq, time.monotonic_ns())
            s.send(packet.ljust(HEADER.size + PAYLOAD, b"\xd5"))
    print(total, flush=True)


def recv(port, seconds):
    delays = []
    seen = set()
    ef = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.IPPROTO_IP, socket.IP_RECVTOS, 1)
        s.bind(("0.0.0.0", port))
        print("listening", flush=True)
        s.settimeout(30)
        end = None
        while end is None or time.monotonic() < end:
            try:
                data, ancillary, _, _ = s.recvmsg(2048, socket.CMSG_SPACE(1))
            except socket.timeout:
                break
            for level, kind, value in ancillary:
                if (level, kind) == (socket.IPPROTO_IP, socket.IP_TOS) and value[0] >> 2 == DSCP_EF:
                    ef += 1
            arrived = time.monotonic_ns()
            if end is None:
                end = time.monotonic() + seconds
                s.settimeout(0.1)
            seq, sent = struct.unpack_from("!QQ", data, HEADER.size)
            seen.add(seq)
            delays.append((arrived - sent) / 1e6)
    delays.sort()
    pick = lambda q: delays[min(len(delays) - 1, int(q * len(delays)))] if delays else 0.0
    lost = (max(seen) + 1 - len(seen)) if seen else 0
    print(
        f"received {len(seen)} lost {lost} p50_ms {pick(0.5):.3f} "
        f"p99_ms {pick(0.99):.3f} max_ms {delays[-1] if delays else 0.0:.3f} ef {ef}",
        flush=True,
    )


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    else:
        recv(int(sys.argv[2]), float(sys.argv[3]))
