"""Reads a counter of a running DPDK process through its telemetry socket.

telemetry.py PREFIX PORT FIELD  ->  prints the value of /ethdev/stats,PORT FIELD
"""
import json
import socket
import sys


def query(prefix, command):
    path = f"/var/run/dpdk/{prefix}/dpdk_telemetry.v2"
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect(path)
        hello = json.loads(s.recv(1 << 16))
        s.send(command.encode())
        return json.loads(s.recv(hello.get("max_output_len", 1 << 16)))


if __name__ == "__main__":
    prefix, port, field = sys.argv[1], sys.argv[2], sys.argv[3]
    reply = query(prefix, f"/ethdev/stats,{port}")
    print(reply["/ethdev/stats"][field])
