"""Soak: many questions through the socket API from concurrent clients, against a real
`appliance serve` process. Reports latency p50/p95, errors (must be 0) and the daemon's RSS at
start and end (growth should stay within 10%).

    python -m benchmarks.soak [--questions 10000] [--clients 8]
"""
from __future__ import annotations

import argparse
import itertools
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from appliance.client import ApiClient
from appliance.errors import ApplianceError

ROOT = Path(__file__).resolve().parent.parent


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def wait_for(sock: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"daemon exited with status {proc.returncode}")
        try:
            ApiClient(sock).close()
            return
        except ApplianceError:
            time.sleep(0.2)
    raise SystemExit("daemon did not come up")


def wait_for_voice(sock: Path, timeout: float = 180) -> None:
    """The daemon loads its speech models in a thread after READY; measure RSS after that."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(sock))
        s.settimeout(timeout)
        s.sendall(b'{"type": "subscribe"}\n')
        reader = s.makefile()
        while json.loads(reader.readline()).get("event") not in ("ready", "audio-error"):
            pass


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--questions", type=int, default=10000)
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--index", type=Path, default=ROOT / "build" / "bench-index")
    args = p.parse_args(argv)
    pool_questions = [q["question"] for f in sorted((ROOT / "tests" / "data").glob("kb_questions_*.json"))
                      for q in json.loads(f.read_text())]
    with tempfile.TemporaryDirectory() as tmp:
        sock = Path(tmp) / "soak.sock"
        log = open(Path(tmp) / "daemon.log", "w+")  # a pipe nobody reads would fill and block the daemon
        proc = subprocess.Popen([sys.executable, "-m", "appliance", "serve", "--socket", str(sock),
                                 "--index", str(args.index)], cwd=ROOT, stderr=log, text=True)
        try:
            wait_for(sock, proc)
            wait_for_voice(sock)
            with ApiClient(sock) as warm:  # two passes: the reader's buffers grow to the longest windows
                for q in pool_questions * 2:
                    warm.ask(q)
            rss_start = rss_mb(proc.pid)
            counter = itertools.count()
            latencies: list[float] = []
            errors: list[str] = []
            lock = threading.Lock()
            started = time.time()

            def client_loop(_: int) -> None:
                with ApiClient(sock, timeout=300) as client:
                    while (i := next(counter)) < args.questions:
                        t = time.perf_counter()
                        try:
                            client.ask(pool_questions[i % len(pool_questions)])
                        except ApplianceError as exc:
                            with lock:
                                errors.append(str(exc))
                        with lock:
                            latencies.append((time.perf_counter() - t) * 1000)
                            if len(latencies) % 1000 == 0:  # progress, so a cut-short run still tells something
                                print(json.dumps({"done": len(latencies), "errors": len(errors),
                                                  "rss_mb": round(rss_mb(proc.pid), 1),
                                                  "p50_ms": round(float(np.percentile(latencies, 50)), 1)}),
                                      file=sys.stderr, flush=True)

            with ThreadPoolExecutor(args.clients) as pool:
                list(pool.map(client_loop, range(args.clients)))
            rss_end = rss_mb(proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
            log.seek(0)
            tracebacks = log.read().count("Traceback")
    result = {
        "questions": len(latencies), "clients": args.clients, "errors": len(errors),
        "daemon_tracebacks": tracebacks, "daemon_exit_status": proc.returncode,
        "wall_s": round(time.time() - started, 1), "throughput_qps": round(len(latencies) / (time.time() - started), 2),
        "latency_ms": {"p50": round(float(np.percentile(latencies, 50)), 1),
                       "p95": round(float(np.percentile(latencies, 95)), 1)},
        "daemon_rss_mb": {"start": round(rss_start, 1), "end": round(rss_end, 1),
                          "growth_pct": round(100 * (rss_end - rss_start) / rss_start, 1)},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
