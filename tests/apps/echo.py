"""A raw TCP echo server (not HTTP): every byte received is sent back."""
import argparse
import socketserver

parser = argparse.ArgumentParser()
parser.add_argument("--port", type=int, default=9000)
args = parser.parse_args()


class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            data = self.request.recv(65536)
            if not data:
                return
            self.request.sendall(data)


socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("0.0.0.0", args.port), Echo).serve_forever()
