"""One hop of a test call chain, written on the standard library only.

GET /anything -> "<pod>" or "<pod> -> <answer of --next>". The pod name comes
from TAGGER_POD (set by the local cluster); with --echo-query it is followed
by "(<query>)". With --copy-header NAME the hop copies that request header
onto its downstream call, as an app instrumented for lanes would; without it
the app copies nothing. With --keep-alive each server thread keeps one
persistent connection (http.client) to the next hop, else urllib opens one
per call.
"""
import argparse
import http.client
import http.server
import os
import threading
import urllib.parse
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8080)
parser.add_argument("--next", default=None, help="URL of the next hop")
parser.add_argument("--copy-header", action="append", default=[])
parser.add_argument("--echo-query", action="store_true")
parser.add_argument("--keep-alive", action="store_true")
parser.add_argument("--call-after", type=int, default=0,
                    help="answer the first N requests without calling --next")
args = parser.parse_args()
NAME = os.environ.get("TAGGER_POD", "hop")
LOCAL = threading.local()
SERVED = iter(range(1 << 62))
SERVED_LOCK = threading.Lock()


def call_next(path, headers):
    """GET the next hop; returns its body as text."""
    if not args.keep_alive:
        request = urllib.request.Request(args.next + path.lstrip("/"), headers=headers)
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.read().decode()
    target = urllib.parse.urlsplit(args.next)
    connection = getattr(LOCAL, "connection", None)
    for attempt in range(2):
        if connection is None:
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=10)
            LOCAL.connection = connection
        try:
            connection.request("GET", target.path + path.lstrip("/"), headers=headers)
            return connection.getresponse().read().decode()
        except (http.client.HTTPException, OSError):
            connection.close()
            connection = LOCAL.connection = None
            if attempt:
                raise


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        answer = NAME
        if args.echo_query:
            answer += "(" + urllib.parse.urlsplit(self.path).query + ")"
        with SERVED_LOCK:
            served = next(SERVED)
        if args.next and served >= args.call_after:
            headers = {}
            for name in args.copy_header:
                value = self.headers.get(name)
                if value is not None:
                    headers[name] = value
            try:
                answer += " -> " + call_next(self.path, headers)
            except Exception as error:  # show the failure in the answer
                answer += f" -> ERROR({error})"
        body = answer.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        # The body only matters to tagger's rules: read it, answer as GET.
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.do_GET()

    def log_message(self, fmt, *a):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()
