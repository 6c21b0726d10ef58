#!/usr/bin/env python3
"""A real FTP server (pyftpdlib) and client (Python's ftplib) for the e2e tests.

The server needs Debian's python3-pyftpdlib: run it with /usr/bin/python3.

usage: ftp.py serve ADDR PORT DIR
         Serves DIR read-only to anonymous users; prints "listening" once bound,
         and exits when its first client disconnects (or after 60 s).
       ftp.py get ADDR PORT FILE
         Logs in anonymously and fetches FILE twice, once in passive mode
         (PASV, answered by 227) and once in active mode (PORT); prints the
         bytes received by each.
"""

import ftplib
import sys
import time


def serve(addr, port, root):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    done = []

    class Handler(FTPHandler):
        def on_disconnect(self):
            done.append(True)

    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(root)
    Handler.authorizer = authorizer
    server = FTPServer((addr, int(port)), Handler)
    print("listening", flush=True)
    deadline = time.monotonic() + 60
    while not done and time.monotonic() < deadline:
        server.serve_forever(timeout=0.1, blocking=False)
    server.close_all()


def get(addr, port, name):
    ftp = ftplib.FTP()
    ftp.connect(addr, int(port), timeout=10)
    ftp.login()
    for passive in (True, False):
        ftp.set_pasv(passive)
        data = bytearray()
        ftp.retrbinary(f"RETR {name}", data.extend)
        print(len(data), flush=True)
    ftp.quit()


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "get":
        get(*sys.argv[2:])
    else:
        sys.exit(__doc__)
