"""A slow client, many times over: opens N connections to HOST:PORT, sends
each half a request head ("GET / HTTP/1.1\\r\\nHost: x\\r\\nX-Slow: "), and
then nothing. Waits (at most LIMIT seconds) until the server closes each,
and prints one JSON line: how many were opened, answered 503 at once
(refused over a connection bound), closed by the server without an answer
(the header read timeout), and still open at the end."""
import json
import selectors
import socket
import sys
import time

host, port, count, limit = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
selector = selectors.DefaultSelector()
opened = refused = closed = 0
received = {}
for _ in range(count):
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    s.setblocking(False)
    selector.register(s, selectors.EVENT_READ)
    received[s] = b""
    opened += 1
deadline = time.time() + limit
while received and time.time() < deadline:
    for key, _ in selector.select(timeout=0.2):
        s = key.fileobj
        try:
            data = s.recv(4096)
        except (ConnectionResetError, BlockingIOError):
            data = b""
        if data:
            received[s] += data
            continue
        if received[s].startswith(b"HTTP/1.1 503"):
            refused += 1
        else:
            closed += 1
        selector.unregister(s)
        s.close()
        del received[s]
print(json.dumps({"opened": opened, "refused_503": refused,
                  "closed_without_answer": closed, "still_open": len(received)}))
