"""A TCP byte stream whose content both ends check.

serve PORT               accept one connection, print "<bytes> <sha256>" of what arrived
send HOST PORT N         send N deterministic bytes, print "<bytes> <sha256>" of what was sent
send-paced HOST PORT N S send N bytes spread evenly over S seconds, then print as send does
serve-many PORT C        accept C connections at once, print the total bytes received
send-many HOST PORT C N  open C connections at once, send N bytes on each, print the total
http HOST PORT NAME      send one HTTP/1.1 GET for Host NAME, print the bytes sent
"""
import hashlib
import socket
import sys
import threading
import time


def pattern(n):
    block = bytes((i * 7 + 3) & 0xFF for i in range(65536))
    while n > 0:
        chunk = block[: min(n, len(block))]
        n -= len(chunk)
        yield chunk


def serve(port):
    family = socket.AF_INET6
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(1)
        print("listening", flush=True)
        conn, _ = s.accept()
        digest, total = hashlib.sha256(), 0
        with conn:
            while True:
                data = conn.recv(65536)
                if not data:
                    break
                digest.update(data)
                total += len(data)
        print(total, digest.hexdigest(), flush=True)


def send(host, port, n, seconds=0.0):
    digest, total = hashlib.sha256(), 0
    start = time.monotonic()
    with socket.create_connection((host, port), timeout=30) as s:
        for chunk in pattern(n):
            for i in range(0, len(chunk), 4096):
                piece = chunk[i : i + 4096]
                s.sendall(piece)
                digest.update(piece)
                total += len(piece)
                if seconds:
                    # Stay on the schedule of an even rate over `seconds`.
                    ahead = start + seconds * total / n - time.monotonic()
                    if ahead > 0:
                        time.sleep(ahead)
    print(total, digest.hexdigest(), flush=True)


def serve_many(port, count):
    totals = []
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", port))
        s.listen(count)
        print("listening", flush=True)

        def drain(conn):
            total = 0
            with conn:
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    total += len(data)
            totals.append(total)

        threads = []
        for _ in range(count):
            conn, _ = s.accept()
            t = threading.Thread(target=drain, args=(conn,))
            t.start()
            threads.append(t)
        for t in threads:
            t.join()
    print(sum(totals), flush=True)


def send_many(host, port, count, n):
    conns = [socket.create_connection((host, port), timeout=30) for _ in range(count)]
    total = 0
    for chunk in pattern(n):
        for c in conns:
            c.sendall(chunk)
            total += len(chunk)
    for c in conns:
        c.close()
    print(total, flush=True)


def http(host, port, name):
    request = f"GET /watch HTTP/1.1\r\nHost: {name}\r\nUser-Agent: patronus-e2e\r\n\r\n".encode()
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(request)
    print(len(request), hashlib.sha256(request).hexdigest(), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(int(sys.argv[2]))
    elif cmd == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    elif cmd == "send-paced":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif cmd == "http":
        http(sys.argv[2], int(sys.argv[3]), sys.argv[4])
    elif cmd == "serve-many":
        serve_many(int(sys.argv[2]), int(sys.argv[3]))
    else:
        send_many(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
