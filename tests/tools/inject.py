"""Sends raw Ethernet frames given in hex out of an interface: inject.py IFACE HEX..."""
import socket
import sys

with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
    s.bind((sys.argv[1], 0))
    for frame in sys.argv[2:]:
        s.send(bytes.fromhex(frame))
print(len(sys.argv) - 2)
