"""One hop of a test call chain that does its socket I/O with scatter-gather
syscalls, as servers written on raw sockets do: `recvmsg`/`sendmsg`
(--io msg) or `readv`/`writev` (--io vec). Standard library only.

Any method on any path -> "<pod>" or "<pod> -> <answer of --next>". The call
to --next is a POST whose head and body (--body-kib KiB) go out in ONE
sendmsg/writev call, on one persistent connection per server thread; the
app copies no header.
"""
import argparse
import os
import socket
import threading

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8080)
parser.add_argument("--next", default=None, help="host:port of the next hop")
parser.add_argument("--io", choices=["msg", "vec"], default="msg")
parser.add_argument("--body-kib", type=int, default=0)
args = parser.parse_args()
NAME = os.environ.get("TAGGER_POD", "hop")
LOCAL = threading.local()
BODY = b"x" * (args.body_kib * 1024)


def receive(sock, size=65536):
    buffer = bytearray(size)
    if args.io == "msg":
        n, _, _, _ = sock.recvmsg_into([buffer])
    else:
        n = os.readv(sock.fileno(), [buffer])
    return bytes(buffer[:n])


def send_all(sock, parts):
    """Writes `parts` with as few scatter-gather calls as the kernel allows."""
    parts = [memoryview(p) for p in parts if p]
    while parts:
        if args.io == "msg":
            n = sock.sendmsg(parts)
        else:
            n = os.writev(sock.fileno(), parts)
        while n and parts:
            if n >= len(parts[0]):
                n -= len(parts[0])
                parts.pop(0)
            else:
                parts[0] = parts[0][n:]
                n = 0


def read_message(sock, pending):
    """One HTTP/1.1 message (head + Content-Length body) from `sock`;
    returns (head, body, leftover) or None at EOF."""
    while b"\r\n\r\n" not in pending:
        chunk = receive(sock)
        if not chunk:
            return None
        pending += chunk
    head, _, rest = pending.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(rest) < length:
        chunk = receive(sock)
        if not chunk:
            return None
        rest += chunk
    return head, rest[:length], rest[length:]


def call_next():
    host, port = args.next.rsplit(":", 1)
    for attempt in range(2):
        connection = getattr(LOCAL, "connection", None)
        if connection is None:
            connection = socket.create_connection((host, int(port)), timeout=10)
            # os.readv/os.writev need a blocking fd (a timeout makes it
            # non-blocking underneath).
            connection.settimeout(None)
            LOCAL.connection, LOCAL.pending = connection, b""
        head = f"POST / HTTP/1.1\r\nHost: {host}\r\nContent-Length: {len(BODY)}\r\n\r\n"
        try:
            send_all(connection, [head.encode(), BODY])
            message = read_message(connection, LOCAL.pending)
            if message is None:
                raise OSError("next hop closed the connection")
            _, body, LOCAL.pending = message
            return body.decode()
        except OSError:
            connection.close()
            LOCAL.connection = None
            if attempt:
                raise


def serve(client):
    pending = b""
    with client:
        while True:
            message = read_message(client, pending)
            if message is None:
                return
            _, _, pending = message
            answer = NAME
            if args.next:
                try:
                    answer += " -> " + call_next()
                except Exception as error:  # show the failure in the answer
                    answer += f" -> ERROR({error})"
            body = answer.encode()
            head = f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n\r\n"
            send_all(client, [head.encode(), body])


listener = socket.create_server(("0.0.0.0", args.port), backlog=64)
while True:
    connection, _ = listener.accept()
    threading.Thread(target=serve, args=(connection,), daemon=True).start()
