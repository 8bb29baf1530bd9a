"""Timing: warm up, then the median of repeated samples, several callables interleaved."""
import statistics
import time


def measure(fns, *, repeats, target_sample_s=0.004, warmup=2, sync=None, max_time_s=None, min_repeats=3):
    """Seconds per call of each callable: a list of (median, samples) in the order given.

    Each callable is warmed up, then timed in samples of `inner` back-to-back calls (enough calls
    to last about `target_sample_s`, so the timer's resolution does not matter). The callables
    take turns sample by sample, so that a burst of load from elsewhere on the machine hits all
    of them alike, and a ratio of their medians stays fair. `sync` (e.g. a device synchronise)
    runs before a sample's clock is read. Past `max_time_s` of sampling, it stops after
    `min_repeats` rounds: a slow or stalling machine costs time, not a run that never ends.
    """
    sync = sync or (lambda: None)
    inner = []
    for fn in fns:
        for _ in range(max(0, warmup - 1)):
            fn()
        # The slower of two timed calls sets the calls per sample: one lucky call must not make
        # every sample of a machine with stalls last many times the target.
        one = 1e-9
        for _ in range(2):
            sync()
            start = time.perf_counter()
            fn()
            sync()
            one = max(one, time.perf_counter() - start)
        inner.append(max(1, int(target_sample_s / one)))
    samples = [[] for _ in fns]
    began = time.perf_counter()
    for round_ in range(repeats):
        if max_time_s is not None and round_ >= min_repeats and time.perf_counter() - began > max_time_s:
            break
        for k, fn in enumerate(fns):
            calls = inner[k]
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            sync()
            samples[k].append((time.perf_counter() - start) / calls)
    return [(statistics.median(s), s) for s in samples]
