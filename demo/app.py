"""The field report's services (seed 003), behaving exactly as its Spring apps.

device, charge and order take `str` and `userId`, append their own name and
version to `str` and call the next service with `str` and `userId`; base
answers `str + "base.v1111 (userId: <userId>)"`, where an absent userId
prints as Java prints a null String: `null`.

The apps copy no header: lanes and pass-through headers are tagger's job.
"""
import argparse
import http.server
import urllib.parse
import urllib.request

parser = argparse.ArgumentParser()
parser.add_argument("--service", required=True, choices=["device", "charge", "order", "base"])
parser.add_argument("--version", required=True)
parser.add_argument("--port", type=int, default=8080)
args = parser.parse_args()

NEXT = {"device": "charge", "charge": "order", "order": "base"}
# device writes "->", the later hops "-->", as in the report's output.
ARROW = {"device": " -> "}


class Echo(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/" + args.service:
            return self.answer(404, f"no route {url.path}")
        params = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        text = params.get("str", [""])[0]
        user_id = params.get("userId", [None])[0]
        if args.service == "base":
            shown = "null" if user_id is None else user_id
            return self.answer(200, f"{text}base.{args.version} (userId: {shown})")
        text += f"{args.service}.{args.version}{ARROW.get(args.service, ' --> ')}"
        query = {"str": text}
        if user_id is not None:  # Feign leaves a null parameter out
            query["userId"] = user_id
        following = NEXT[args.service]
        target = f"http://{following}:8080/{following}?{urllib.parse.urlencode(query)}"
        try:
            with urllib.request.urlopen(target, timeout=10) as response:
                return self.answer(200, response.read().decode())
        except Exception as error:
            return self.answer(502, f"{args.service} -> {following} failed: {error}")

    def answer(self, status, text):
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt, *a):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Echo).serve_forever()
