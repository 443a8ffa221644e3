"""Steady load for live-change tests: GET URL from 4 threads for DURATION
seconds (each thread one keep-alive connection, about 100 requests/s in
all), printing "<unix time> <status> <body>" per request. Errors print
status 0 and the error. Optional further arguments are headers "name: value"."""
import http.client
import sys
import threading
import time
import urllib.parse

url, duration = sys.argv[1], float(sys.argv[2])
headers = dict(h.split(": ", 1) for h in sys.argv[3:])
target = urllib.parse.urlsplit(url)
path = target.path + ("?" + target.query if target.query else "")
end = time.time() + duration
lock = threading.Lock()


def worker():
    connection = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
    while time.time() < end:
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            line = f"{time.time():.3f} {response.status} {response.read().decode()}"
        except (http.client.HTTPException, OSError) as error:
            connection.close()
            connection = http.client.HTTPConnection(target.hostname, target.port, timeout=5)
            line = f"{time.time():.3f} 0 {error}"
        with lock:
            print(line, flush=True)
        time.sleep(0.04)


threads = [threading.Thread(target=worker) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
