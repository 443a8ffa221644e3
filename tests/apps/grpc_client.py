"""gRPC client for the end-to-end tests (tests/tests/grpc.rs), raw bytes.

  grpc_client.py call TARGET METHOD REQUEST [KEY=VALUE ...]
      one unary call with those metadata; prints the answer.
  grpc_client.py stream TARGET METHOD REQUEST [KEY=VALUE ...]
      one server-streaming call; prints each message on its own line.
  grpc_client.py burst TARGET METHOD CALLS CHANNELS CONCURRENCY
      CALLS unary calls over CHANNELS channels (each its own HTTP/2
      connection), at most CONCURRENCY in flight, every other one with
      `x-lane: gray` metadata, request i carrying the marker "m=<i>".
      Prints one JSON line per call: {"i", "gray", "answer"}.
"""
import json
import sys
import threading

import grpc


def channel(target):
    return grpc.insecure_channel(
        target,
        options=[
            ("grpc.enable_http_proxy", 0),
            ("grpc.enable_retries", 0),
            # Each channel its own connection: channels to one target would
            # otherwise share one subchannel, so one connection.
            ("grpc.use_local_subchannel_pool", 1),
        ],
    )


def call(target, method, request, pairs):
    metadata = tuple(tuple(p.split("=", 1)) for p in pairs)
    with channel(target) as ch:
        print(ch.unary_unary(method)(request.encode(), metadata=metadata, timeout=15).decode())


def stream(target, method, request, pairs):
    metadata = tuple(tuple(p.split("=", 1)) for p in pairs)
    with channel(target) as ch:
        for message in ch.unary_stream(method)(request.encode(), metadata=metadata, timeout=15):
            print(message.decode())


def burst(target, method, calls, channels, concurrency):
    stubs = [channel(target).unary_unary(method) for _ in range(channels)]
    slots = threading.BoundedSemaphore(concurrency)
    results, lock, done = [], threading.Lock(), threading.Event()

    def finished(i, gray, future):
        try:
            answer = future.result().decode()
        except grpc.RpcError as error:
            answer = f"ERROR({error.code()}: {error.details()})"
        with lock:
            results.append({"i": i, "gray": gray, "answer": answer})
            if len(results) == calls:
                done.set()
        slots.release()

    for i in range(calls):
        slots.acquire()
        gray = i % 2 == 0
        metadata = (("x-lane", "gray"),) if gray else ()
        future = stubs[i % channels].future(f"m={i}".encode(), metadata=metadata, timeout=30)
        future.add_done_callback(lambda f, i=i, gray=gray: finished(i, gray, f))
    done.wait(120)
    for r in sorted(results, key=lambda r: r["i"]):
        print(json.dumps(r))


if __name__ == "__main__":
    mode, target, method = sys.argv[1:4]
    if mode == "call":
        call(target, method, sys.argv[4], sys.argv[5:])
    elif mode == "stream":
        stream(target, method, sys.argv[4], sys.argv[5:])
    else:
        burst(target, method, *(int(a) for a in sys.argv[4:7]))
