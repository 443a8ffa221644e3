"""Sends raw bytes as an HTTP request and prints the status line.
The payload is argv[3] with \\r\\n escapes, or @FILE to read it from a file."""
import socket
import sys

host, port, spec = sys.argv[1], int(sys.argv[2]), sys.argv[3]
if spec.startswith("@"):
    with open(spec[1:], "rb") as f:
        payload = f.read()
else:
    payload = spec.encode().decode("unicode_escape").encode("latin-1")
with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(payload)
    data = s.recv(65536)
print(data.decode("latin-1").split("\r\n")[0])
