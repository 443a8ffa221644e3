"""One hop of a test call chain, written on the standard library only.

GET /anything -> "<pod>" or "<pod> -> <answer of --next>". The pod name comes
from TAGGER_POD (set by the local cluster). With --copy-header NAME the hop
copies that request header onto its downstream call, as an app instrumented
for lanes would; without it the app copies nothing.
"""
import argparse
import http.server
import os
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8080)
parser.add_argument("--next", default=None, help="URL of the next hop")
parser.add_argument("--copy-header", action="append", default=[])
args = parser.parse_args()
NAME = os.environ.get("TAGGER_POD", "hop")


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self):
        answer = NAME
        if args.next:
            request = urllib.request.Request(args.next + self.path.lstrip("/"))
            for name in args.copy_header:
                value = self.headers.get(name)
                if value is not None:
                    request.add_header(name, value)
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    answer += " -> " + response.read().decode()
            except Exception as error:  # show the failure in the answer
                answer += f" -> ERROR({error})"
        body = answer.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Handler).serve_forever()
