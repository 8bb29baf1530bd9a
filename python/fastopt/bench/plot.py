"""The PNG of a run: fraction of the bandwidth limit per kernel, and speed-up over the references."""


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in result["records"] if "seconds" in r and r["impl"].startswith("fastopt")
               and r["kind"] != "overhead"]
    if not records:
        raise ValueError("nothing to plot: the run has no fastopt measurement")
    # One backend, or its records would replace each other's: the default one for NumPy arrays.
    backends = [r["backend"] for r in records]
    backend = "cpu" if "cpu" in backends else backends[0]
    threads = max(r["threads"] for r in records)
    records = [r for r in records if r["threads"] == threads and r["backend"] == backend]
    largest = {}
    for r in records:  # per workload, the largest size measured
        if r["size"] >= largest.get(r["workload"], {"size": -1})["size"]:
            largest[r["workload"]] = r
    rows = list(largest.values())
    labels = [f"{r['workload']} ({r['size']:.2g})" if r["kind"] == "optimizer" else r["workload"] for r in rows]

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 0.32 * len(rows) + 2.0), sharey=True)
    fractions = [r.get("fraction_of_limit") or 0.0 for r in rows]
    ys = range(len(rows))
    left.barh(ys, fractions, color="tab:blue")
    left.axvline(1.0, color="black", lw=0.8)
    left.axvline(0.9, color="tab:red", lw=0.8, ls="--", label="90%")
    left.set_yticks(list(ys), labels, fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("fraction of the measured bandwidth limit (same access pattern)")
    left.legend(loc="lower right", fontsize=8)

    refs = [("numpy", "NumPy in-place"), ("torch-foreach", "torch foreach"),
            ("torch-fused", "torch fused"), ("torch", "torch batch_norm")]
    height = 0.8 / len(refs)
    for k, (key, name) in enumerate(refs):
        values = [r.get("speedup", {}).get(key) for r in rows]
        if not any(values):
            continue
        right.barh([y - 0.4 + (k + 0.5) * height for y in ys], [v or 0 for v in values], height=height, label=name)
    right.axvline(1.0, color="black", lw=0.8)
    right.set_xscale("log")
    right.set_xlabel("speed-up of fastopt (reference time / fastopt time)")
    right.legend(loc="lower right", fontsize=8)
    machine = result["machine"]
    fig.suptitle(f"fastopt[{backend}] bench, {machine.get('cpu', machine.get('machine'))}, {threads} threads, "
                 f"{machine['date_utc'][:10]}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
