"""A longer run with quantized optimizer state: an MLP regressing a fixed random teacher network,
AdamW with float32, 8-bit and fp8 state from the same initialisation and batches; prints the
training loss curve (means over windows of steps) and the held-out loss of each.

    PYTHONPATH=python python bench/regression_state_dtype.py [--steps 2000] [--seeds 3] [--lr 2e-3]

Student: 32 -> 256 -> 256 -> 8 with ReLU, all parameters in one FlatParams buffer (75,528
floats: 295 blocks of quantized state per moment). Teacher: a 32 -> 64 -> 8 tanh network; the
targets get Gaussian noise of standard deviation 0.05, so the best reachable mean squared error
is 0.0025. Cosine learning-rate decay from --lr, batch 128, fresh batches every step. A run
that diverges shows nan from the window where it did.
"""
import argparse

import numpy as np

import fastopt

WIDTHS = (32, 256, 256, 8)
NOISE = 0.05


def teacher(seed):
    rng = np.random.default_rng(1000 + seed)
    w1 = rng.standard_normal((WIDTHS[0], 64)) / np.sqrt(WIDTHS[0])
    w2 = rng.standard_normal((64, WIDTHS[-1])) * 1.5 / np.sqrt(64)
    return lambda x: np.tanh(x @ w1) @ w2


class Student:
    def __init__(self, seed):
        shapes = []
        for fan_in, fan_out in zip(WIDTHS, WIDTHS[1:]):
            shapes += [(fan_in, fan_out), (fan_out,)]
        self.flat = fastopt.FlatParams(shapes, "float32")
        rng = np.random.default_rng(seed)
        for w, fan_in in zip(self.flat.views[::2], WIDTHS):
            w[...] = rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)
        self.weights, self.biases = self.flat.views[::2], self.flat.views[1::2]
        self.dweights, self.dbiases = self.flat.grad_views[::2], self.flat.grad_views[1::2]

    def forward(self, x):
        h = x
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if k < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        return h

    def loss_and_grad(self, x, y):
        inputs, h = [], x
        for k, (w, b) in enumerate(zip(self.weights, self.biases)):
            inputs.append(h)
            h = h @ w + b
            if k < len(self.weights) - 1:
                h = np.maximum(h, 0.0)
        diff = h - y
        loss = float(np.mean(diff * diff))
        dz = (2.0 / diff.size) * diff
        for k in range(len(self.weights) - 1, -1, -1):
            np.matmul(inputs[k].T, dz, out=self.dweights[k])
            np.sum(dz, axis=0, out=self.dbiases[k])
            if k > 0:
                dz = (dz @ self.weights[k].T) * (inputs[k] > 0)
        return loss


def train(state_dtype, steps, seed, batch=128, lr=2e-3):
    """(training losses per step, held-out loss) for one state precision."""
    target = teacher(seed)
    data = np.random.default_rng(seed)
    model = Student(seed)
    opt = fastopt.AdamW(model.flat.data, lr=lr, weight_decay=1e-4, state_dtype=state_dtype)
    schedule = fastopt.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    losses = []
    for _ in range(steps):
        x = data.standard_normal((batch, WIDTHS[0])).astype(np.float32)
        y = (target(x) + NOISE * data.standard_normal((batch, WIDTHS[-1]))).astype(np.float32)
        losses.append(model.loss_and_grad(x, y))
        opt.step(model.flat.grad)
        schedule.step()
    held = np.random.default_rng(10_000 + seed)
    x = held.standard_normal((4096, WIDTHS[0])).astype(np.float32)
    y = target(x) + NOISE * held.standard_normal((4096, WIDTHS[-1]))
    return np.array(losses), float(np.mean((model.forward(x) - y) ** 2))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--window", type=int, default=250)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--state-dtypes", nargs="+", default=["float32", "8bit", "fp8"])
    args = parser.parse_args(argv)
    edges = list(range(0, args.steps, args.window))
    with np.errstate(all="ignore"):  # a diverging run overflows: its losses become inf and nan
        results = {s: [train(s, args.steps, seed, lr=args.lr) for seed in range(args.seeds)]
                   for s in args.state_dtypes}
    print(f"AdamW, lr {args.lr:g}. Mean training loss over steps, mean of {args.seeds} seeds; held-out loss at the end "
          f"(noise floor {NOISE ** 2:.4f}).\n")
    header = " | ".join(f"steps {a}-{a + args.window - 1}" for a in edges)
    print(f"| state | {header} | held-out | held-out per seed |")
    print("|---|" + "---:|" * (len(edges) + 2))
    for state, runs in results.items():
        curve = [np.mean([losses[a:a + args.window].mean() for losses, _ in runs]) for a in edges]
        held = [h for _, h in runs]
        cells = " | ".join(f"{c:.4f}" for c in curve)
        print(f"| {state} | {cells} | {np.mean(held):.4f} | {' '.join(f'{h:.4f}' for h in held)} |")
    base = np.mean([losses for losses, _ in results[args.state_dtypes[0]]], axis=0)
    for state in args.state_dtypes[1:]:
        other = np.mean([losses for losses, _ in results[state]], axis=0)
        windows = [np.mean(other[a:a + args.window]) / np.mean(base[a:a + args.window]) for a in edges]
        print(f"\n{state} / {args.state_dtypes[0]} training loss per window: "
              + " ".join(f"{r:.3f}" for r in windows))


if __name__ == "__main__":
    main()
