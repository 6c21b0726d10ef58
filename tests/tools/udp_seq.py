"""A paced UDP stream with sequence numbers, and its receiver.

send HOST PORT PPS SECONDS [--first TEXT] [--from-port N]
                             send PPS datagrams a second for SECONDS, each
                             carrying its sequence number; print the count sent.
                             --first: one datagram of TEXT (escapes such as \r\n
                             allowed) before the stream, for the classifier;
                             --from-port: the source port (default: any)
recv PORT SECONDS            receive for SECONDS after the first datagram; print
                             "received R lost L max_gap_ms G" where lost counts
                             the sequence numbers never seen up to the highest
                             one, and max_gap_ms is the longest silence between
                             two datagrams in a row (the blackout of a failover)
"""
import argparse
import socket
import struct
import sys
import time

SIZE = 64


def send(host, port, pps, seconds, first=None, from_port=0):
    total = int(pps * seconds)
    payload = bytearray(SIZE)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", from_port))
        s.connect((host, port))
        if first is not None:
            s.send(first)
        start = time.monotonic()
        seq = 0
        while seq < total:
            # Catch up with the schedule in one go, then wait for the next
            # tick: the rate holds even when the scheduler is late.
            due = min(total, int((time.monotonic() - start) * pps) + 1)
            while seq < due:
                struct.pack_into("!Q", payload, 0, seq)
                try:
                    s.send(payload)
                except OSError:
                    pass  # no route for a moment: the datagram is lost
                seq += 1
            time.sleep(0.0005)
    print(total, flush=True)


def recv(port, seconds):
    seen = set()
    max_gap = 0.0
    last = None
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("0.0.0.0", port))
        print("listening", flush=True)
        s.settimeout(30)
        data = s.recv(SIZE)
        end = time.monotonic() + seconds
        s.settimeout(0.05)
        while True:
            now = time.monotonic()
            if now >= end:
                break
            seen.add(struct.unpack_from("!Q", data)[0])
            if last is not None:
                max_gap = max(max_gap, now - last)
            last = now
            data = None
            while data is None and time.monotonic() < end:
                try:
                    data = s.recv(SIZE)
                except socket.timeout:
                    pass
            if data is None:
                break
    highest = max(seen) if seen else -1
    lost = highest + 1 - len(seen)
    print(f"received {len(seen)} lost {lost} max_gap_ms {max_gap * 1000:.1f}", flush=True)


def send_args(argv):
    parser = argparse.ArgumentParser(prog="udp_seq.py send")
    for name, kind in [("host", str), ("port", int), ("pps", float), ("seconds", float)]:
        parser.add_argument(name, type=kind)
    parser.add_argument("--first", type=str)
    parser.add_argument("--from-port", type=int, default=0)
    a = parser.parse_args(argv)
    first = None
    if a.first is not None:
        first = a.first.encode("latin-1").decode("unicode_escape").encode("latin-1")
    return a.host, a.port, a.pps, a.seconds, first, a.from_port


if __name__ == "__main__":
    if sys.argv[1] == "send":
        send(*send_args(sys.argv[2:]))
    elif sys.argv[1] == "recv":
        recv(int(sys.argv[2]), float(sys.argv[3]))
    else:
        sys.exit(__doc__)
