"""Train a small MLP with BatchNorm on scikit-learn's bundled 8x8 digits with fastopt.

    python examples/train_digits.py --optimizer adamw --epochs 30 --plot loss.png
    python examples/train_digits.py --optimizer adamw-schedulefree   # no learning-rate schedule
    mpiexec -n 2 python -m mpi4py examples/train_digits.py --distributed   # data-parallel
    python examples/train_digits.py --ema 0.999        # also evaluate an EMA of the weights

The model is Linear(64, 128) -> BatchNorm -> ReLU -> Linear(128, 10) -> softmax cross-entropy,
written in NumPy. Every trainable tensor lives in one fastopt.FlatParams buffer, so each step of
the whole model is a single fused optimizer call. The data set ships with scikit-learn: nothing
is downloaded.

With ``--distributed`` (under mpiexec) every rank takes its part of each global batch:
BatchNorm becomes SyncBatchNorm (statistics of the whole global batch) and the optimizer a
fastopt.distributed.ShardedOptimizer (each rank keeps the state of one shard), so training
follows the single-process run with the same global batch.

With ``--ema DECAY`` the optimizer also keeps an exponential moving average of the weights,
updated inside its fused step (ema_decay=DECAY, with warm-up); after training the test accuracy
is reported for the live weights and for the averaged ones (swapped in with opt.swap_ema(); the
BatchNorm running statistics are the live model's).
"""
import argparse
import time

import numpy as np

import fastopt

# Learning rates that train this model well with each optimizer.
OPTIMIZERS = {
    "sgd": (fastopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    "adagrad": (fastopt.Adagrad, dict(lr=0.05)),
    "rmsprop": (fastopt.RMSprop, dict(lr=1e-3)),
    "adadelta": (fastopt.Adadelta, dict(lr=1.0)),
    "adam": (fastopt.Adam, dict(lr=3e-3)),
    "adamw": (fastopt.AdamW, dict(lr=3e-3, weight_decay=1e-2)),
    "adamax": (fastopt.Adamax, dict(lr=5e-3)),
    "nadam": (fastopt.NAdam, dict(lr=3e-3)),
    "radam": (fastopt.RAdam, dict(lr=2e-2)),
    "lion": (fastopt.Lion, dict(lr=2e-3, weight_decay=1e-2)),
    "ademamix": (fastopt.AdEMAMix, dict(lr=3e-3, weight_decay=1e-2)),
    # Schedule-Free: no schedule (warmup_steps is its warm-up); evaluated at x, in eval mode.
    "adamw-schedulefree": (fastopt.AdamWScheduleFree, dict(lr=5e-3, warmup_steps=50, weight_decay=1e-3)),
    "sgd-schedulefree": (fastopt.SGDScheduleFree, dict(lr=0.5, warmup_steps=50)),
}
SCHEDULE_FREE = (fastopt.SGDScheduleFree, fastopt.AdamWScheduleFree)


def load_digits_split(seed):
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError:
        raise SystemExit("this example needs scikit-learn: pip install scikit-learn "
                         "(from a clone: pip install '.[examples]')") from None

    x, y = load_digits(return_X_y=True)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=seed, stratify=y)
    mean, std = x_train.mean(axis=0), x_train.std(axis=0) + 1e-3
    return ((x_train - mean) / std).astype(np.float32), y_train, ((x_test - mean) / std).astype(np.float32), y_test


class MLP:
    def __init__(self, hidden, rng, comm=None):
        self.comm = comm  # an MPI communicator: batch statistics over every rank's samples
        self.params = fastopt.FlatParams([(64, hidden), (hidden,), (hidden,), (hidden,), (hidden, 10), (10,)])
        self.w1, self.b1, self.gamma, self.beta, self.w2, self.b2 = self.params.views
        (self.gw1, self.gb1, self.ggamma, self.gbeta, self.gw2, self.gb2) = self.params.grad_views
        self.w1[...] = rng.standard_normal(self.w1.shape) * np.sqrt(2.0 / 64)
        self.w2[...] = rng.standard_normal(self.w2.shape) * np.sqrt(1.0 / hidden)
        self.gamma[...] = 1.0
        self.running_mean = np.zeros(hidden, np.float32)
        self.running_var = np.ones(hidden, np.float32)

    def forward(self, x, training):
        h = x @ self.w1 + self.b1
        if self.comm is not None:
            from fastopt.distributed import sync_batch_norm_forward
            z, mean, invstd = sync_batch_norm_forward(h, self.gamma, self.beta, self.running_mean, self.running_var,
                                                      comm=self.comm, training=training, momentum=0.1, eps=1e-5)
            a = np.maximum(z, 0)
        else:
            # BatchNorm and ReLU in one kernel: a = max(0, bn(h)).
            a, mean, invstd = fastopt.batch_norm_forward(h, self.gamma, self.beta, self.running_mean,
                                                         self.running_var, training=training, momentum=0.1,
                                                         eps=1e-5, activation="relu")
        logits = a @ self.w2 + self.b2
        return logits, (x, h, a, mean, invstd)

    def backward(self, dlogits, cache):
        x, h, a, mean, invstd = cache
        self.gw2[...] = a.T @ dlogits
        self.gb2[...] = dlogits.sum(axis=0)
        if self.comm is not None:
            from fastopt.distributed import sync_batch_norm_backward
            dz = (dlogits @ self.w2.T) * (a > 0)
            dh, dgamma, dbeta = sync_batch_norm_backward(dz, h, self.gamma, mean, invstd, comm=self.comm)
        else:
            # The ReLU's mask comes from its output a.
            dh, dgamma, dbeta = fastopt.batch_norm_backward(dlogits @ self.w2.T, h, self.gamma, mean, invstd,
                                                            activation="relu", y=a)
        self.ggamma[...] = dgamma
        self.gbeta[...] = dbeta
        self.gw1[...] = x.T @ dh
        self.gb1[...] = dh.sum(axis=0)


def softmax_cross_entropy(logits, labels, total=None):
    """Mean loss and its gradient; ``total``: the global batch size this part belongs to."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    probs = exp / exp.sum(axis=1, keepdims=True)
    n = labels.size
    loss = -np.log(probs[np.arange(n), labels] + 1e-12).sum() / (total or n)
    dlogits = probs
    dlogits[np.arange(n), labels] -= 1
    return float(loss), (dlogits / (total or n)).astype(np.float32)


def train(optimizer="adam", epochs=30, batch_size=64, hidden=128, seed=0, max_grad_norm=5.0, verbose=True,
          comm=None, ema_decay=None, state_dtype=None):
    """Returns (test accuracy, per-epoch mean training losses), and with ``ema_decay`` a third
    item: the test accuracy of the EMA of the weights.

    ``comm``: an mpi4py communicator to train data-parallel; every rank draws the same global
    batches and takes its contiguous part of each (the gradients are summed, not averaged,
    since each part's loss is already divided by the global batch size). ``state_dtype``: the
    optimizer's (None: float32; 'bfloat16', '8bit', 'fp8').
    """
    rng = np.random.default_rng(seed)
    x_train, y_train, x_test, y_test = load_digits_split(seed)
    model = MLP(hidden, rng, comm)
    cls, hyper = OPTIMIZERS[optimizer]
    schedule_free = cls in SCHEDULE_FREE
    if comm is None:
        ema = {} if ema_decay is None else dict(ema_decay=ema_decay, ema_warmup=True)
        opt = cls(model.params.data, state_dtype=state_dtype, **hyper, **ema)
    elif schedule_free:
        raise SystemExit(f"--optimizer {optimizer} needs train() / eval(), which ShardedOptimizer does not forward")
    elif ema_decay is not None:
        raise ValueError("the EMA of the weights is for single-process training here")
    else:
        from fastopt.distributed import ShardedOptimizer
        opt = ShardedOptimizer(cls, model.params.data, comm, average=False, deterministic=True, **hyper)
    rank, ranks = (0, 1) if comm is None else (comm.rank, comm.size)
    schedule = None if schedule_free else fastopt.schedules.Scheduler(
        opt, lambda t, lr0=hyper["lr"], total=epochs * (len(y_train) // batch_size):
        fastopt.schedules.cosine(t, lr0, total, lr0 * 0.05))
    losses = []
    for epoch in range(epochs):
        order = rng.permutation(len(y_train))
        epoch_loss = []
        for start in range(0, len(order) - batch_size + 1, batch_size):
            idx = order[start:start + batch_size]
            idx = idx[rank * batch_size // ranks:(rank + 1) * batch_size // ranks]  # this rank's part
            logits, cache = model.forward(x_train[idx], training=True)
            loss, dlogits = softmax_cross_entropy(logits, y_train[idx], total=batch_size)
            model.backward(dlogits, cache)
            opt.step(model.params.grad, max_grad_norm=max_grad_norm)
            if schedule is not None:
                schedule.step()
            epoch_loss.append(loss if comm is None else comm.allreduce(loss))
        losses.append(float(np.mean(epoch_loss)))
        if verbose and rank == 0:
            print(f"epoch {epoch + 1:3d}  loss {losses[-1]:.4f}")
    if schedule_free:
        # Evaluate at x. BatchNorm's running statistics were gathered at y: recompute them at x
        # with training-mode passes over some training batches (the schedulefree package's advice).
        opt.eval()
        for start in range(0, min(len(y_train), 50 * batch_size) - batch_size + 1, batch_size):
            model.forward(x_train[start:start + batch_size], training=True)

    def test_accuracy():
        logits, _ = model.forward(x_test, training=False)
        return float((logits.argmax(axis=1) == y_test).mean())

    accuracy = test_accuracy()
    if ema_decay is None:
        return accuracy, losses
    with opt.swap_ema():  # the averaged weights in the model's buffer, the live ones back after
        ema_accuracy = test_accuracy()
    return accuracy, losses, ema_accuracy


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), default="adam")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--state-dtype", choices=["float32", "bfloat16", "8bit", "fp8"], default=None,
                        help="the optimizer state's storage (default float32)")
    parser.add_argument("--plot", metavar="PNG", help="save the training-loss curve to this file")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel over MPI.COMM_WORLD (launch with mpiexec -n N python -m mpi4py ...)")
    parser.add_argument("--ema", type=float, nargs="?", const=0.999, metavar="DECAY",
                        help="also keep an EMA of the weights (decay, default 0.999, with warm-up) and "
                             "report its test accuracy")
    args = parser.parse_args(argv)
    comm = None
    if args.distributed:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    start = time.perf_counter()
    result = train(args.optimizer, args.epochs, args.batch_size, seed=args.seed, comm=comm, ema_decay=args.ema,
                   state_dtype=args.state_dtype)
    accuracy, losses = result[:2]
    if comm is not None and comm.rank != 0:
        return accuracy
    ranks = f" on {comm.size} ranks" if comm is not None else ""
    print(f"{args.optimizer}: test accuracy {accuracy:.4f} after {args.epochs} epochs{ranks} "
          f"({time.perf_counter() - start:.1f} s)")
    if args.ema is not None:
        print(f"EMA of the weights (decay {args.ema}, warm-up): test accuracy {result[2]:.4f}")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.plot(np.arange(1, len(losses) + 1), losses)
        ax.set(xlabel="epoch", ylabel="training loss", yscale="log",
               title=f"digits MLP + BatchNorm, {args.optimizer}, test accuracy {accuracy:.3f}")
        fig.tight_layout()
        fig.savefig(args.plot, dpi=100)
        print(f"loss curve written to {args.plot}")
    return accuracy


if __name__ == "__main__":
    main()
