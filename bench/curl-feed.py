#!/usr/bin/env python3
"""The change feed with ordinary clients: SUBSCRIBERS `curl -sN` processes on GET /a/changes, pgbench writing RATE
one-row commits a second into a for SECONDS (+3 s of warm-up, not counted).

Usage: curl-feed.py API_URL PG_BINDIR PORT DATABASE [rate=1000] [seconds=10] [subscribers=50]

Each row's data is the microsecond (epoch) at which PostgreSQL began its INSERT; one of the curls is read here, and an
event's latency runs from that moment to the moment its line came out of curl, commit included (as bench/FeedLoad's
does). The other curls write to /dev/null. Prints: p50_ms p99_ms p999_ms max_ms received expected.
"""
import os, subprocess, sys, tempfile, threading, time

api, bindir, port, database = sys.argv[1:5]
rest = [int(x) for x in sys.argv[5:]]
server = ["-h", "127.0.0.1", "-p", port, "-U", "postgres"]
rate, seconds, subscribers = (rest + [1000, 10, 50][len(rest):])[:3]
warmup = 3
url = f"{api}/a/changes"

quiet = [subprocess.Popen(["curl", "-sN", "-o", "/dev/null", url]) for _ in range(subscribers - 1)]
measured = subprocess.Popen(["curl", "-sN", url], stdout=subprocess.PIPE)
latencies, marker = [], b'"data":"t'
start_us = None

def read():
    for line in measured.stdout:
        if not line.startswith(b"data:"):
            continue
        at = line.find(marker)
        if at < 0:
            continue
        now = time.time_ns() // 1000
        end = line.index(b'"', at + len(marker))
        sent = int(line[at + len(marker):end])
        if start_us is not None and sent >= start_us + warmup * 1_000_000:
            latencies.append((now - sent) / 1000)

reader = threading.Thread(target=read, daemon=True)
reader.start()
time.sleep(1)                                  # every subscriber connected
with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as script:
    script.write("INSERT INTO a (data) VALUES ('t' || (extract(epoch FROM clock_timestamp()) * 1000000)::bigint);\n")
start_us = time.time_ns() // 1000
subprocess.run([f"{bindir}/pgbench", *server, "-n", "-c", "4", "-j", "2", "-R", str(rate), "-T", str(seconds + warmup),
                "-f", script.name, database], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.unlink(script.name)
time.sleep(2)                                  # the last events' way to the subscribers
for p in quiet + [measured]:
    p.terminate()
reader.join(timeout=5)
expected = int(subprocess.run([f"{bindir}/psql", *server, "-d", database, "-XAtq", "-c",
    f"SELECT count(*) FROM a WHERE data LIKE 't%' AND substr(data, 2)::bigint >= {start_us + warmup * 1_000_000}"],
    check=True, capture_output=True, text=True).stdout)
latencies.sort()
at = lambda q: latencies[min(len(latencies) - 1, int(q * len(latencies)))] if latencies else float("nan")
print(f"{at(0.5):.1f} {at(0.99):.1f} {at(0.999):.1f} {latencies[-1] if latencies else float('nan'):.1f} {len(latencies)} {expected}")
