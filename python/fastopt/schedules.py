"""Learning-rate schedules: pure functions of the step t (0-based count of steps taken), and a
scheduler object that writes ``opt.lr`` (Deep Learning, sec. 8.3.1, and common practice)."""
import math


def step_decay(t, lr0, step_size, gamma=0.1):
    """lr0 * gamma ** floor(t / step_size)."""
    return lr0 * gamma ** (t // step_size)


def exponential(t, lr0, k):
    """lr0 * exp(-k t)."""
    return lr0 * math.exp(-k * t)


def inverse_time(t, lr0, k):
    """lr0 / (1 + k t)."""
    return lr0 / (1.0 + k * t)


def linear_to(t, lr0, lr_tau, tau):
    """Linear decay from lr0 to lr_tau over tau steps, then constant (Deep Learning, eq. 8.14)."""
    if t >= tau:
        return lr_tau
    alpha = t / tau
    return (1.0 - alpha) * lr0 + alpha * lr_tau


def cosine(t, lr0, t_max, lr_min=0.0):
    """Cosine annealing from lr0 to lr_min over t_max steps (Loshchilov & Hutter 2017), then lr_min."""
    if t >= t_max:
        return lr_min
    return lr_min + 0.5 * (lr0 - lr_min) * (1.0 + math.cos(math.pi * t / t_max))


def warmup(t, lr, warmup_steps, start_factor=0.0):
    """Linear warm-up from start_factor * lr to lr over warmup_steps, then lr."""
    if t >= warmup_steps:
        return lr
    return lr * (start_factor + (1.0 - start_factor) * t / warmup_steps)


class Scheduler:
    """Sets ``optimizer.lr = schedule(t)`` where t counts ``step()`` calls from 0.

    >>> sched = Scheduler(opt, lambda t: warmup(t, cosine(t, 1e-3, 1000), 100))
    >>> for batch in data: opt.step(grad); sched.step()
    """

    def __init__(self, optimizer, schedule):
        if not callable(schedule):
            raise TypeError("schedule must be a function of the step count")
        self.optimizer = optimizer
        self.schedule = schedule
        self.t = 0
        optimizer.lr = schedule(0)

    def step(self):
        self.t += 1
        self.optimizer.lr = self.schedule(self.t)
        return self.optimizer.lr

    def state_dict(self):
        return {"t": self.t}

    def load_state_dict(self, state):
        self.t = int(state["t"])
        self.optimizer.lr = self.schedule(self.t)
