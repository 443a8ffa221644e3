"""Lane-correctness load: N requests at concurrency C to URL, alternating
gray (x-lane: gray) and baseline, each with a unique marker m=<i> in the
query and a unique request id: x-request-id, or with a fourth argument
`traceparent` or `b3` a W3C or Zipkin trace id instead. Prints one JSON line
per request: {"i", "gray", "answer"}. Each worker thread keeps one
keep-alive connection (http.client)."""
import http.client
import json
import sys
import threading
import urllib.parse

url, total, concurrency = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
id_header = sys.argv[4] if len(sys.argv) > 4 else "x-request-id"


def request_id(i):
    """A distinct id for request i in the header's own format."""
    trace = f"{i + 1:032x}"
    if id_header == "traceparent":
        return f"00-{trace}-{i + 1:016x}-01"
    if id_header == "b3":
        return f"{trace}-{i + 1:016x}-1"
    return f"req-{i}"
target = urllib.parse.urlsplit(url)
lock = threading.Lock()
results = []
counter = iter(range(total))


def worker():
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    while True:
        with lock:
            i = next(counter, None)
        if i is None:
            return
        gray = i % 2 == 0
        headers = {"x-lane": "gray"} if gray else {}
        headers[id_header] = request_id(i)
        try:
            connection.request("GET", f"{target.path}?m={i}", headers=headers)
            answer = connection.getresponse().read().decode()
        except (http.client.HTTPException, OSError) as error:
            connection.close()
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
            answer = f"ERROR({error})"
        with lock:
            results.append({"i": i, "gray": gray, "answer": answer})


threads = [threading.Thread(target=worker) for _ in range(concurrency)]
for t in threads:
    t.start()
for t in threads:
    t.join()
for r in sorted(results, key=lambda r: r["i"]):
    print(json.dumps(r))
