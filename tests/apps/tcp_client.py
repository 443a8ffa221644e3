"""Raw TCP client: sends argv[3] and prints what comes back (echo test)."""
import socket
import sys

host, port, payload = sys.argv[1], int(sys.argv[2]), sys.argv[3].encode()
with socket.create_connection((host, port), timeout=5) as s:
    s.sendall(payload)
    s.shutdown(socket.SHUT_WR)
    data = b""
    while chunk := s.recv(65536):
        data += chunk
print(data.decode())
