"""Steady load for live-change tests: GET URL from 4 threads for DURATION
seconds (each thread one keep-alive connection, about 100 requests/s in
all; --interval SECONDS sets each thread's pause between requests), printing "<unix time it was sent> <status> <body>" per request. Errors print
status 0 and the error. Optional further arguments are headers "name: value".
With --until-stdin-closes it also stops when its standard input closes, so
that a test ends it at the moment it chooses."""
import http.client
import sys
import threading
import time
import urllib.parse

argv = sys.argv[1:]
watch_stdin = "--until-stdin-closes" in argv
argv = [a for a in argv if a != "--until-stdin-closes"]
interval = 0.04
if "--interval" in argv:
    at = argv.index("--interval")
    interval = float(argv[at + 1])
    del argv[at : at + 2]
url, duration = argv[0], float(argv[1])
headers = dict(h.split(": ", 1) for h in argv[2:])
target = urllib.parse.urlsplit(url)
path = target.path + ("?" + target.query if target.query else "")
end = time.time() + duration
lock = threading.Lock()


def worker():
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
    while time.time() < end:
        # Stamped when sent: requests of different threads overlap, and the
        # proxy decides each when it arrives.
        sent = time.time()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            line = f"{sent:.3f} {response.status} {response.read().decode()}"
        except (http.client.HTTPException, OSError) as error:
            connection.close()
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
            line = f"{sent:.3f} 0 {error}"
        with lock:
            print(line, flush=True)
        time.sleep(interval)


def stop_when_stdin_closes():
    global end
    sys.stdin.read()
    end = time.time()


if watch_stdin:
    threading.Thread(target=stop_when_stdin_closes, daemon=True).start()
threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
