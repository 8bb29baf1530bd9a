"""Command line of the benchmark: `python -m fastopt bench [options]`."""
import argparse
import json
import sys

import numpy as np


def _int_list(text):
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def parser():
    p = argparse.ArgumentParser(prog="fastopt bench", description=(
        "Check, then time fastopt's kernels against the memory-bandwidth limit measured in the same "
        "run, NumPy in-place ufuncs and torch (when installed)."))
    p.add_argument("--quick", action="store_true", help="small sizes, all threads only: under a minute")
    p.add_argument("--json", metavar="PATH", help="write every result and the machine description as JSON")
    p.add_argument("--plot", metavar="PATH", help="draw a PNG: bandwidth fraction and speed-ups")
    p.add_argument("--markdown", metavar="PATH", help="write the result tables as Markdown")
    p.add_argument("--only", metavar="NAMES", help="comma-separated words: optimizer names (Adam, SGD ...), "
                   "'optimizers', 'models', model names (resnet50, gpt2), 'clip', 'batchnorm', 'bnfused' (BN+ReLU, "
                   "BN+add+ReLU only), 'overhead', 'ema' (Adam with the fused EMA of the weights), "
                   "'quantized' (8-bit and fp8 optimizer state), "
                   "'training' (whole training steps, quiet and beside busy processes: only when named)")
    p.add_argument("--threads", metavar="N", type=_int_list,
                   help="thread counts to measure, e.g. 1,2 (default: 1 and all)")
    p.add_argument("--backends", metavar="NAMES", help="comma-separated: cpu, numba, cuda (default: all available)")
    p.add_argument("--sizes", metavar="N", type=_int_list, help="element counts of the optimizer sweep")
    p.add_argument("--repeats", metavar="N", type=int, help="timed samples per measurement (median reported)")
    return p


def only_words():
    """The words --only takes: optimizer and model names (and a model's name before its dash),
    and the workload groups."""
    from . import workloads

    words = {"optimizers", "models", "clip", "batchnorm", "bn", "bnfused", "overhead", "lists", "training", "ema",
             "quantized", "8bit"}
    words |= {spec.name.lower() for spec in workloads.OPTIMIZERS}
    for model in workloads.MODELS:
        words |= {model.name.lower(), model.name.lower().split("-")[0]}
    return words


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _training(args, config):
    """--only training: whole training steps in worker processes (fastopt.bench.training)."""
    from .runner import machine_description
    from .training import run_training, training_table

    if config.only != ["training"]:
        parser().error("--only training runs on its own; measure the kernels in another run")
    records = run_training()
    tables = training_table(records) + "\n\n" + training_table(records, "optimizer_ms")
    print(tables)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine_description(), "records": records}, f, indent=1, default=_json_default)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(tables + "\n")
    return 0


def main(argv=None):
    from . import CheckFailed, Config, headline_text, markdown_table, run
    from .runner import keep_freed_memory

    args = parser().parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser().error("--repeats must be >= 1")
    if args.only:
        unknown = [w for w in (s.strip().lower() for s in args.only.split(",")) if w and w not in only_words()]
        if unknown:
            parser().error(f"--only: unknown name(s) {', '.join(unknown)}; known: {', '.join(sorted(only_words()))}")
    if args.backends:
        import fastopt

        info = fastopt.backends()
        for name in args.backends.split(","):
            if name not in info:
                parser().error(f"--backends: unknown backend {name!r}; known: {', '.join(info)}")
            if not info[name]["available"]:
                print(f"fastopt bench: backend {name} is unavailable here: {info[name]['reason']}", file=sys.stderr)
                return 2
    config = Config(quick=args.quick, only=args.only, threads=args.threads,
                    backends=args.backends.split(",") if args.backends else None,
                    sizes=args.sizes, repeats=args.repeats)
    print(f"fastopt bench: backends {', '.join(config.backends)}; threads {config.threads}"
          + "".join(f"; {name} unavailable: {why}" for name, why in config.unavailable.items()), file=sys.stderr)
    if config.only and "training" in config.only:
        return _training(args, config)
    allocator = keep_freed_memory()  # before anything large is allocated
    try:
        result = run(config, allocator)
    except CheckFailed as exc:
        print(f"fastopt bench: CORRECTNESS CHECK FAILED, nothing more measured:\n  {exc}", file=sys.stderr)
        return 1
    table = markdown_table(result["records"])
    print(table)
    rows = [(h["figure"], h["measured"], h["target"], h["met"]) for h in result["headline"]]
    if rows:
        print()
        print(headline_text(rows))
    print(f"\n({result['elapsed_s']:.0f} s)", file=sys.stderr)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1, default=_json_default)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table + ("\n\n" + headline_text(rows) if rows else "") + "\n")
    if args.plot:
        from .plot import plot

        plot(result, args.plot)
    return 0
