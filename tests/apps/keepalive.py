"""Sends several requests on ONE keep-alive connection (http.client), each
with its own lane header (or none), and prints one answer per line. Fails if
the connection was not reused."""
import http.client
import sys

host, port = sys.argv[1], int(sys.argv[2])
lanes = sys.argv[3:]  # "-" means no lane header
conn = http.client.HTTPConnection(host, port, timeout=10)
first_sock = None
for lane in lanes:
    headers = {} if lane == "-" else {"x-lane": lane}
    conn.request("GET", "/", headers=headers)
    response = conn.getresponse()
    print(response.read().decode())
    if first_sock is None:
        first_sock = conn.sock
    elif conn.sock is not first_sock:
        sys.exit("the client opened a new connection: keep-alive was not kept")
