"""Broken and greedy HTTP clients, one per mode, against HOST:PORT; each
prints one JSON line saying what the server did.

  garbage       a valid request pipelined with garbage on one connection
  bad-chunk     a chunked body with an invalid chunk size
  huge-chunked  a POST with a 64 MiB chunked body, sent whole
  headers       a request with 500 header lines
  never-reads   8 connections that ask for 64 MiB each and read nothing
                for 3 s (the server must not buffer it all), then close
  flood         1000 new connections from 20 threads at once, each a request
"""
import json
import socket
import sys
import time

host, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def connect():
    return socket.create_connection((host, port), timeout=10)


def read_all(s, limit=1 << 20):
    data = b""
    try:
        while len(data) < limit:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, socket.timeout):
        pass
    return data


def statuses(data):
    return [int(line.split()[1]) for line in data.split(b"\r\n") if line.startswith(b"HTTP/1.1 ")]


result = {"mode": mode}
if mode == "garbage":
    s = connect()
    s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n\x00\x01garbage \xff\r\n\r\n")
    data = read_all(s)
    result["statuses"] = statuses(data)
    result["closed"] = True
elif mode == "bad-chunk":
    s = connect()
    s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
    result["statuses"] = statuses(read_all(s))
elif mode == "huge-chunked":
    s = connect()
    s.sendall(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n")
    block = b"y" * (1 << 20)
    chunk = b"%x\r\n" % len(block) + block + b"\r\n"
    for _ in range(64):
        s.sendall(chunk)
    s.sendall(b"0\r\n\r\n")
    data = read_all(s, 4096)
    result["statuses"] = statuses(data)
    result["body"] = data.split(b"\r\n\r\n", 1)[-1].decode(errors="replace")
elif mode == "headers":
    s = connect()
    head = b"GET / HTTP/1.1\r\nHost: a\r\n" + b"".join(b"x-h%d: v\r\n" % i for i in range(500)) + b"\r\n"
    s.sendall(head)
    result["statuses"] = statuses(read_all(s))
elif mode == "never-reads":
    held = []
    for _ in range(8):
        s = connect()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(b"GET /big?mb=64 HTTP/1.1\r\nHost: a\r\n\r\n")
        held.append(s)
    time.sleep(3)
    for s in held:
        s.close()
    result["held"] = len(held)
elif mode == "flood":
    import threading

    counts = {"answered": 0, "refused": 0, "failed": 0}
    lock = threading.Lock()

    def flooder():
        for _ in range(50):
            try:
                s = connect()
                s.sendall(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                got = statuses(read_all(s, 4096))
                s.close()
                key = "answered" if got == [200] else "refused" if got == [503] else "failed"
            except OSError:
                key = "failed"
            with lock:
                counts[key] += 1

    started = time.time()
    threads = [threading.Thread(target=flooder) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result.update(counts, seconds=round(time.time() - started, 1))
print(json.dumps(result), flush=True)
