"""The soak's client: THREADS threads send mixed requests to the chains
(py-a, go-a) until standard input closes. Each request is gray (x-lane),
baseline, or user 100 (a rule at b); a thread drops its connection every
few requests (connection churn). Every answer is checked:
- baseline: no gray pod anywhere;
- gray: c is gray (the lane travels; b may be base while its gray pod is
  stopped: fallback and return);
- user 100: c is base (the lane is not sticky; b is gray, or base while
  its gray pod is stopped or the rule is disabled).
Prints one line per second: "<unix time> <ok> <wrong> <failed>", and the
first wrong answers as "WRONG <kind> <answer>".
"""
import http.client
import random
import sys
import threading
import time

THREADS = int(sys.argv[1]) if len(sys.argv) > 1 else 8
CHAINS = ["py", "go"]
KINDS = ["gray", "base", "user"]
lock = threading.Lock()
counts = {"ok": 0, "wrong": 0, "failed": 0}
stop = threading.Event()
shown = [0]


def check(kind, chain, answer, i):
    hops = answer.split(" -> ")
    if len(hops) != 3 or not hops[2].endswith(f"(m={i})"):
        return False
    a, b, c = hops
    if not a.startswith(f"{chain}-a-base"):
        return False
    c_gray = c.startswith(f"{chain}-c-gray")
    if kind == "base":
        return "gray" not in answer
    if kind == "gray":
        return c_gray
    return not c_gray  # user 100


def worker(seed):
    rng = random.Random(seed)
    connections = {}
    i = seed * 10_000_000
    while not stop.is_set():
        i += 1
        chain, kind = rng.choice(CHAINS), rng.choice(KINDS)
        headers = {"gray": {"x-lane": "gray"}, "base": {}, "user": {"x-user-id": "100"}}[kind]
        connection = connections.get(chain)
        if connection is None or rng.random() < 0.1:
            if connection is not None:
                connection.close()
            connection = http.client.HTTPConnection(f"{chain}-a", 8080, timeout=10)
            connections[chain] = connection
        try:
            connection.request("GET", f"/?m={i}", headers=headers)
            answer = connection.getresponse().read().decode()
            good = check(kind, chain, answer, i)
            with lock:
                counts["ok" if good else "wrong"] += 1
                if not good and shown[0] < 20:
                    shown[0] += 1
                    print(f"WRONG {kind} {answer}", flush=True)
        except (http.client.HTTPException, OSError):
            connection.close()
            connections[chain] = None
            with lock:
                counts["failed"] += 1
        time.sleep(rng.uniform(0.0, 0.01))


def report():
    while not stop.is_set():
        time.sleep(1)
        with lock:
            print(f"{time.time():.0f} {counts['ok']} {counts['wrong']} {counts['failed']}", flush=True)


threads = [threading.Thread(target=worker, args=(n + 1,), daemon=True) for n in range(THREADS)]
for t in threads:
    t.start()
threading.Thread(target=report, daemon=True).start()
sys.stdin.read()
stop.set()
for t in threads:
    t.join(timeout=15)
with lock:
    print(f"{time.time():.0f} {counts['ok']} {counts['wrong']} {counts['failed']}", flush=True)
