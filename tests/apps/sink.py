"""An HTTP upstream for hostile-input tests: POST reads the whole body
(Content-Length or chunked) and answers how many bytes came; GET /big?mb=N
streams N MiB; anything else answers "ok"."""
import argparse
import http.server
import urllib.parse

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=8080)
args = parser.parse_args()


class Sink(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *_):
        pass

    def answer(self, body):
        body = body.encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        received = 0
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    left -= len(self.rfile.read(min(left, 1 << 16)))
                self.rfile.readline()
                received += size
        else:
            left = int(self.headers.get("content-length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
                received += len(chunk)
        self.answer(f"got {received} bytes")

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/big":
            mib = int(urllib.parse.parse_qs(url.query).get("mb", ["1"])[0])
            self.send_response(200)
            self.send_header("content-length", str(mib << 20))
            self.end_headers()
            block = b"x" * (1 << 20)
            try:
                for _ in range(mib):
                    self.wfile.write(block)
            except OSError:
                pass
            return
        self.answer("ok")


http.server.ThreadingHTTPServer.daemon_threads = True
http.server.ThreadingHTTPServer(("0.0.0.0", args.port), Sink).serve_forever()
