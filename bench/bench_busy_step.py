"""A 1e6-element SGD-momentum step (fastopt, and NumPy's in-place ufuncs) beside busy processes.

    python bench/bench_busy_step.py [BUSY ...]      (default: 0 1 2)

For each count, that many processes each keep one core busy (pure Python loops) while 200 steps
of each implementation are timed; prints the median, mean and maximum in ms as one JSON line.
"""
import json
import subprocess
import sys
import time

import numpy as np

import fastopt


def timed(step, calls=200):
    for _ in range(20):
        step()
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t)
    ms = np.array(samples) * 1e3
    return {"median": round(float(np.median(ms)), 3), "mean": round(float(ms.mean()), 3),
            "max": round(float(ms.max()), 2)}


def main(counts):
    n = 10**6
    p, g = np.ones(n, np.float32), np.full(n, 0.01, np.float32)
    opt = fastopt.SGD(p, lr=0.01, momentum=0.9)
    q, buf, scratch = np.ones(n, np.float32), np.zeros(n, np.float32), np.empty(n, np.float32)

    def numpy_step():
        np.multiply(buf, 0.9, out=buf)
        np.add(buf, g, out=buf)
        np.multiply(buf, 0.01, out=scratch)
        np.subtract(q, scratch, out=q)

    for busy in counts:
        procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(busy)]
        try:
            time.sleep(0.5)
            result = {"busy": busy, "fastopt": timed(lambda: opt.step(g)), "numpy": timed(numpy_step)}
        finally:
            for proc in procs:
                proc.kill()
                proc.wait()
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main([int(a) for a in sys.argv[1:]] or [0, 1, 2])
