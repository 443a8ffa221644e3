"""Opens N connections to HOST:PORT at once (all held open), sends one
request with `x-lane: gray` on each, prints the answers as one JSON list,
then holds the connections until its standard input closes."""
import http.client
import json
import sys

host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns = []
for _ in range(count):
    conn = http.client.HTTPConnection(host, port, timeout=10)
    conn.connect()
    conns.append(conn)
answers = []
for conn in conns:
    conn.request("GET", "/", headers={"x-lane": "gray"})
    response = conn.getresponse()
    answers.append(f"{response.status} {response.read().decode()}")
print(json.dumps(answers), flush=True)
sys.stdin.read()
for conn in conns:
    conn.close()
