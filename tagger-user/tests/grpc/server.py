"""gRPC upstreams for tagger's in-process proxy tests (tests/grpc.rs).

Two servers on one port, as a service's endpoints are: "base" on 127.0.0.2
and "gray" on 127.0.0.3. Generic handlers on raw bytes (no generated code),
service `test.Echo`. Prints `PORT <n>` when both listen; exits when its
standard input closes (the test ended).
"""
import json
import os
import sys
import threading
import time
from concurrent import futures

import grpc

MAX_MESSAGE = 64 << 20
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # Another process's socket on the same port must make binding fail,
    # not share the port.
    ("grpc.so_reuseport", 0),
]


class Stats:
    """What the servers saw that a client cannot: calls that ended before
    the handler did (cancelled, or past their deadline), and the deadlines
    that arrived with calls."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ended_early = {"base": 0, "gray": 0}
        self.deadlines = []

    def snapshot(self):
        with self.lock:
            return {"ended_early": dict(self.ended_early), "deadlines": list(self.deadlines)}


STATS = Stats()


def metadata(context, key):
    for k, v in context.invocation_metadata():
        if k == key:
            return v
    return "-"


def watch_end(name, context):
    """Counts the call as ended early if it ends before `finished()`."""
    state = {"finished": False}

    def on_end():
        if not state["finished"]:
            with STATS.lock:
                STATS.ended_early[name] += 1

    context.add_callback(on_end)

    def finished():
        state["finished"] = True

    return finished


def handlers(name):
    def describe(context):
        return f"{name} lane={metadata(context, 'x-lane')} user={metadata(context, 'x-user')}"

    def unary(request, context):
        context.set_trailing_metadata((("x-served-by", name),))
        return f"{describe(context)} len={len(request)}".encode()

    def server_stream(request, context):
        count, size = (int(x) for x in request.decode().split(":"))
        for i in range(count):
            yield f"{describe(context)} #{i} ".encode().ljust(size, b".")

    def client_stream(requests, context):
        count = total = 0
        for message in requests:
            count += 1
            total += len(message)
        return f"{describe(context)} count={count} bytes={total}".encode()

    def bidi(requests, context):
        for message in requests:
            yield f"{describe(context)} ".encode() + message

    def fail(request, context):
        context.set_trailing_metadata((("x-detail", "kept"),))
        context.abort(grpc.StatusCode.NOT_FOUND, "nothing here: " + request.decode())

    def slow(request, context):
        with STATS.lock:
            STATS.deadlines.append(context.time_remaining())
        finished = watch_end(name, context)
        ended = threading.Event()
        context.add_callback(ended.set)
        ended.wait(10)
        finished()
        return b"late"

    def slow_stream(request, context):
        finished = watch_end(name, context)
        for i in range(int(request.decode() or "500")):
            yield f"{name} tick {i}".encode()
            time.sleep(0.02)
        finished()

    def stats(request, context):
        return json.dumps(STATS.snapshot()).encode()

    unary_unary = grpc.unary_unary_rpc_method_handler
    unary_stream = grpc.unary_stream_rpc_method_handler
    return grpc.method_handlers_generic_handler(
        "test.Echo",
        {
            "Unary": unary_unary(unary),
            "ServerStream": unary_stream(server_stream),
            "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
            "Fail": unary_unary(fail),
            "Slow": unary_unary(slow),
            "SlowStream": unary_stream(slow_stream),
            "Stats": unary_unary(stats),
        },
    )


def server(name):
    s = grpc.server(futures.ThreadPoolExecutor(max_workers=64), options=OPTIONS)
    s.add_generic_rpc_handlers((handlers(name),))
    return s


def bind(s, address):
    """The port bound, or 0 (grpc raises or returns 0 by version)."""
    try:
        return s.add_insecure_port(address)
    except RuntimeError:
        return 0


def main():
    for _ in range(100):
        base, gray = server("base"), server("gray")
        port = bind(base, "127.0.0.2:0")
        if port and bind(gray, f"127.0.0.3:{port}") == port:
            break
    else:
        sys.exit("no port free on both 127.0.0.2 and 127.0.0.3")
    base.start()
    gray.start()
    print(f"PORT {port}", flush=True)
    sys.stdin.read()
    os._exit(0)


if __name__ == "__main__":
    main()
