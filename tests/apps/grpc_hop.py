"""One hop of a gRPC test call chain (Python grpcio), the gRPC twin of
hop.py: any unary method answers "<pod>" or "<pod> -> <answer of --next>",
the leaf (no --next) "<pod>(<request>)". Raw bytes through generic
handlers: no .proto file, no generated code.

The hop calls the next one with the method it was called with, through ONE
channel (one HTTP/2 connection: every call of every lane multiplexed on
it). It copies no metadata unless --copy-metadata names a key to copy, as an
app instrumented for lanes would.
"""
import argparse
import os
from concurrent import futures

import grpc

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8080)
parser.add_argument("--next", default=None, help="host:port of the next hop")
parser.add_argument("--copy-metadata", action="append", default=[])
args = parser.parse_args()
NAME = os.environ.get("TAGGER_POD", "hop")
# The proxy (tagger) is reached by the kernel's redirect, never as an HTTP
# proxy from the environment.
OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
CHANNEL = grpc.insecure_channel(args.next, options=OPTIONS) if args.next else None
CALLERS = {}


def caller(method):
    """The channel's callable for a method (made once per method)."""
    if method not in CALLERS:
        CALLERS[method] = CHANNEL.unary_unary(method)
    return CALLERS[method]


class Hop(grpc.GenericRpcHandler):
    def service(self, details):
        method = details.method

        def unary(request, context):
            if CHANNEL is None:
                return f"{NAME}({request.decode()})".encode()
            incoming = context.invocation_metadata()
            metadata = tuple((k, v) for k, v in incoming if k in args.copy_metadata)
            try:
                answer = caller(method)(request, metadata=metadata, timeout=10)
                return f"{NAME} -> ".encode() + answer
            except grpc.RpcError as error:
                return f"{NAME} -> ERROR({error.code()}: {error.details()})".encode()

        return grpc.unary_unary_rpc_method_handler(unary)


server = grpc.server(futures.ThreadPoolExecutor(max_workers=128))
server.add_generic_rpc_handlers((Hop(),))
server.add_insecure_port(f"0.0.0.0:{args.port}")
server.start()
server.wait_for_termination()
