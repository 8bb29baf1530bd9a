"""Training quality with quantized optimizer state: the digits example (examples/train_digits.py)
with float32 and 8-bit state, test accuracy averaged over seeds.

    PYTHONPATH=python python bench/digits_state_dtype.py [--seeds 5] [--state-dtypes float32 8bit]
"""
import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import train_digits  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--optimizers", nargs="+", default=["adam", "adamw", "lion"])
    parser.add_argument("--state-dtypes", nargs="+", default=["float32", "8bit"])
    parser.add_argument("--epochs", type=int, default=30)
    args = parser.parse_args(argv)
    print(f"| optimizer | state | test accuracy, mean of {args.seeds} seeds | min | max | per seed |")
    print("|---|---|---|---|---|---|")
    for name in args.optimizers:
        for state in args.state_dtypes:
            acc = [train_digits.train(name, args.epochs, seed=s, verbose=False, state_dtype=state)[0]
                   for s in range(args.seeds)]
            seeds = " ".join(f"{100 * a:.2f}" for a in acc)
            print(f"| {name} | {state} | {100 * np.mean(acc):.2f}% | {100 * min(acc):.2f}% | {100 * max(acc):.2f}% "
                  f"| {seeds} |", flush=True)


if __name__ == "__main__":
    main()
