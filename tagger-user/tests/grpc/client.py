"""gRPC client scenarios for tagger's in-process proxy tests (tests/grpc.rs).

`client.py HOST:PORT SCENARIO` runs one scenario against the proxy over ONE
channel (one HTTP/2 connection), asserts what it can see, and prints a JSON
summary on its last line for the test to check further. A failed assertion
exits non-zero with the reason on stderr.
"""
import json
import queue
import sys
import threading
import time
from concurrent import futures

import grpc

MAX_MESSAGE = 64 << 20
OPTIONS = [
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    # The proxy is the target: no HTTP proxy from the environment.
    ("grpc.enable_http_proxy", 0),
    # No transparent retries: the test must see what the proxy answered.
    ("grpc.enable_retries", 0),
]


def lane_metadata(lane):
    return () if lane is None else (("x-lane", lane),)


def expect(condition, message):
    if not condition:
        raise AssertionError(message)


def expect_code(error, code, what):
    expect(
        isinstance(error, grpc.RpcError) and error.code() == code,
        f"{what}: wanted {code}, got {error!r}",
    )


class Echo:
    def __init__(self, channel):
        m = lambda kind, name: getattr(channel, kind)(f"/test.Echo/{name}")
        self.unary = m("unary_unary", "Unary")
        self.server_stream = m("unary_stream", "ServerStream")
        self.client_stream = m("stream_unary", "ClientStream")
        self.bidi = m("stream_stream", "Bidi")
        self.fail = m("unary_unary", "Fail")
        self.slow = m("unary_unary", "Slow")
        self.slow_stream = m("unary_stream", "SlowStream")
        self.stats_call = m("unary_unary", "Stats")

    def stats(self):
        return json.loads(self.stats_call(b"", timeout=5))


def served_by(text):
    return text.split(" ", 1)[0]


def lanes(echo):
    """300 concurrent unary calls of mixed lanes on one connection."""
    plan = [["gray", None, "blue"][i % 3] for i in range(300)]
    calls = [
        echo.unary.future(b"x" * i, metadata=lane_metadata(lane), timeout=20)
        for i, lane in enumerate(plan)
    ]
    served = {}
    for i, (lane, call) in enumerate(zip(plan, calls)):
        text = call.result().decode()
        want = "gray" if lane == "gray" else "base"
        expect(served_by(text) == want, f"call {i} lane {lane}: {text}")
        expect(f"lane={lane or '-'} " in text, f"call {i}: lane header {text}")
        expect(text.endswith(f"len={i}"), f"call {i}: {text}")
        trailers = dict(call.trailing_metadata())
        expect(trailers.get("x-served-by") == want, f"call {i}: trailers {trailers}")
        served[want] = served.get(want, 0) + 1
    return {"served": served}


def server_stream(echo):
    """Server streaming: 64 messages of 64 KiB, and one of 16 MiB."""
    result = {}
    for lane in ["gray", None]:
        messages = list(echo.server_stream(b"64:65536", metadata=lane_metadata(lane), timeout=20))
        expect(len(messages) == 64, f"lane {lane}: {len(messages)} messages")
        expect(all(len(m) == 65536 for m in messages), f"lane {lane}: sizes")
        names = {served_by(m.decode("latin-1")) for m in messages}
        expect(names == {"gray" if lane else "base"}, f"lane {lane}: served by {names}")
        result[lane or "baseline"] = len(messages)
    big = list(echo.server_stream(b"1:16777216", timeout=20))
    expect(len(big) == 1 and len(big[0]) == 16 << 20, "one 16 MiB message")
    return result


def client_stream(echo):
    """Client streaming: 64 messages of 256 KiB (16 MiB) up."""
    chunk = b"c" * (256 << 10)
    text = echo.client_stream(iter([chunk] * 64), metadata=lane_metadata("gray"), timeout=20).decode()
    expect(text.startswith("gray lane=gray"), text)
    expect(text.endswith(f"count=64 bytes={64 * len(chunk)}"), text)
    return {"answer": text}


def bidi(echo):
    """Bidirectional ping-pong: each message is sent only after the answer
    to the previous one came, so nothing may be held back on the way. No
    lane header: the service's rules are evaluated for it."""
    outbox = queue.Queue()

    def requests():
        while True:
            message = outbox.get()
            if message is None:
                return
            yield message

    answers = []
    outbox.put(b"ping 0")
    stream = echo.bidi(requests(), timeout=20)
    for answer in stream:
        answers.append(answer.decode())
        if len(answers) == 100:
            outbox.put(None)
        else:
            outbox.put(f"ping {len(answers)}".encode())
    expect(len(answers) == 100, f"{len(answers)} answers")
    expect(
        all(a == f"base lane=- user=- ping {i}" for i, a in enumerate(answers)),
        f"answers {answers[:3]}",
    )
    # A big message each way too.
    big = b"b" * (16 << 20)
    back = list(echo.bidi(iter([big]), timeout=20))
    expect(len(back) == 1 and back[0].endswith(big), "16 MiB echoed")
    text = echo.unary(big, timeout=20).decode()
    expect(text.endswith(f"len={len(big)}"), text[:100])
    return {"answers": len(answers)}


def status(echo):
    """An application error's status, message and trailers pass intact."""
    try:
        echo.fail("ünïcode ✓ 100%".encode(), timeout=5)
        raise AssertionError("Fail succeeded")
    except grpc.RpcError as error:
        expect_code(error, grpc.StatusCode.NOT_FOUND, "Fail")
        expect(error.details() == "nothing here: ünïcode ✓ 100%", f"details {error.details()!r}")
        trailers = dict(error.trailing_metadata())
        expect(trailers.get("x-detail") == "kept", f"trailers {trailers}")
        return {"code": error.code().name, "details": error.details()}


def deadline(echo):
    """A deadline reaches the server (grpc-timeout) and ends the call there."""
    start = time.monotonic()
    try:
        echo.slow(b"", timeout=0.5)
        raise AssertionError("Slow succeeded")
    except grpc.RpcError as error:
        expect_code(error, grpc.StatusCode.DEADLINE_EXCEEDED, "Slow")
    elapsed = time.monotonic() - start
    expect(0.5 <= elapsed < 5, f"took {elapsed:.1f}s")
    stats = wait_for_ended(echo, "base")
    return {"elapsed": elapsed, **stats}


def cancel(echo):
    """Calls the client cancels are cancelled at the server (RST_STREAM
    through the proxy): a stream after its first messages, and a unary call
    still waiting for its answer (no deadline: only the reset can end it).
    The connection goes on."""
    call = echo.slow_stream(b"500", metadata=lane_metadata("gray"), timeout=20)
    first = [next(call) for _ in range(3)]
    expect(all(m.startswith(b"gray tick") for m in first), f"{first}")
    call.cancel()
    try:
        for _ in call:
            pass
    except grpc.RpcError as error:
        expect_code(error, grpc.StatusCode.CANCELLED, "SlowStream")
    wait_for_ended(echo, "gray", 1)
    waiting = echo.slow.future(b"", metadata=lane_metadata("gray"))
    # The call is at the server once its deadline list grows.
    deadline = time.monotonic() + 5
    while not echo.stats()["deadlines"]:
        expect(time.monotonic() < deadline, "the unary call never reached the server")
        time.sleep(0.02)
    waiting.cancel()
    stats = wait_for_ended(echo, "gray", 2)
    # grpc reports "no deadline" as a time_remaining of ~292 years.
    expect(stats["deadlines"][0] > 1e9, f"a deadline appeared: {stats}")
    text = echo.unary(b"after", timeout=5).decode()
    expect(text.startswith("base"), text)
    return stats


def wait_for_ended(echo, name, count=1):
    deadline = time.monotonic() + 5
    while True:
        stats = echo.stats()
        if stats["ended_early"][name] >= count:
            return stats
        expect(time.monotonic() < deadline, f"the server never saw it end: {stats}")
        time.sleep(0.02)


def unavailable(echo):
    """No endpoint: every kind of call gets UNAVAILABLE from tagger."""
    calls = {
        "unary": lambda: echo.unary(b"x", timeout=5),
        "server_stream": lambda: list(echo.server_stream(b"1:1", timeout=5)),
        "client_stream": lambda: echo.client_stream(iter([b"x"]), timeout=5),
        "bidi": lambda: list(echo.bidi(iter([b"x"]), timeout=5)),
    }
    details = {}
    for kind, call in calls.items():
        try:
            call()
            raise AssertionError(f"{kind} succeeded")
        except grpc.RpcError as error:
            expect_code(error, grpc.StatusCode.UNAVAILABLE, kind)
            expect("tagger" in error.details(), f"{kind}: {error.details()!r}")
            details[kind] = error.details()
    return details


def rules(echo):
    """Rules on the method path (prefix, regex) and on metadata."""
    answers = {
        "unary": echo.unary(b"", timeout=5).decode(),
        "unary_vip": echo.unary(b"", metadata=(("x-user", "vip"),), timeout=5).decode(),
        "client_stream": echo.client_stream(iter([b"x"]), timeout=5).decode(),
        "server_stream": echo.server_stream(b"1:1", timeout=5).__next__().decode("latin-1"),
        "bidi": list(echo.bidi(iter([b"x"]), timeout=5))[0].decode(),
    }
    # "<server> lane=<x-lane>" of each answer.
    return {kind: " ".join(text.split(" ")[:2]) for kind, text in answers.items()}


def goaway(echo):
    """A stream in flight when the proxy stops (GOAWAY) completes."""
    call = echo.slow_stream(b"30", timeout=20)
    messages = [next(call)]
    print("streaming", flush=True)
    messages.extend(call)
    expect(len(messages) == 30, f"{len(messages)} messages")
    expect(call.code() == grpc.StatusCode.OK, f"{call.code()}")
    return {"messages": len(messages)}


SCENARIOS = {
    f.__name__: f
    for f in [lanes, server_stream, client_stream, bidi, status, deadline, cancel, unavailable, rules, goaway]
}


def main():
    target, scenario = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=5)
        result = SCENARIOS[scenario](Echo(channel))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
