"""Plain float64 NumPy implementations of docs/algorithms.md, written from the document alone.

Each reference optimizer holds its state in float64 and applies the rule exactly as written
(bias corrections with powers, no folded scalars), so that a bug in fastopt's host scalars or
kernels shows up as a difference. `round_state` optionally rounds the state after each step
(to emulate bfloat16 state storage).
"""
import math

import numpy as np


# Rules whose weight decay is their own (at y, after the normalisation), not the shared prologue's.
OWN_DECAY = ("sgdschedulefree", "adamwschedulefree")


class Reference:
    def __init__(self, name, param, round_state=None, **hyper):
        self.name = name
        self.p = np.asarray(param, dtype=np.float64).copy()
        self.h = dict(hyper)
        self.t = 0
        self.s = {}
        self.round_state = round_state
        self.mu_product = 1.0

    def zeros(self, key, fill=0.0):
        if key not in self.s:
            self.s[key] = np.full_like(self.p, fill)
        return self.s[key]

    def step(self, grad, grad_scale=None, clip=None):
        h = self.h
        self.t += 1
        t = self.t
        g = np.asarray(grad, dtype=np.float64).copy()
        p = self.p
        if h.get("maximize"):
            g = -g
        if grad_scale is not None:
            g = g / grad_scale
        if clip is not None:
            norm = math.sqrt(float(np.sum(g * g)))
            if norm > clip:
                g = g * (clip / (norm + 1e-6))
        wd = h.get("weight_decay", 0.0)
        decoupled = self.name in ("lion", "ademamix") or h.get("decoupled_weight_decay", False)
        if wd != 0 and self.name not in OWN_DECAY:
            if decoupled:
                p *= 1 - h["lr"] * wd
            else:
                g = g + wd * p
        getattr(self, "_" + self.name)(p, g, t, h)
        if self.round_state is not None:
            for key in self.s:
                self.s[key] = self.round_state(self.s[key])
        return p

    def _sgd(self, p, g, t, h):
        mom, damp, lr = h.get("momentum", 0.0), h.get("dampening", 0.0), h["lr"]
        if mom == 0:
            p -= lr * g
            return
        if h.get("velocity_form"):
            v = self.zeros("momentum_buffer")
            v[...] = mom * v - lr * g
            p += mom * v - lr * g if h.get("nesterov") else v
            return
        if t == 1:
            buf = self.zeros("momentum_buffer")
            buf[...] = g
        else:
            buf = self.s["momentum_buffer"]
            buf[...] = mom * buf + (1 - damp) * g
        d = g + mom * buf if h.get("nesterov") else buf
        p -= lr * d

    def _adagrad(self, p, g, t, h):
        s = self.zeros("sum", h.get("initial_accumulator_value", 0.0))
        clr = h["lr"] / (1 + (t - 1) * h.get("lr_decay", 0.0))
        s += g * g
        eps = h.get("eps", 1e-10)
        denom = np.sqrt(s + eps) if h.get("eps_inside_sqrt") else np.sqrt(s) + eps
        p -= clr * g / denom

    def _rmsprop(self, p, g, t, h):
        alpha, eps, mom = h.get("alpha", 0.99), h.get("eps", 1e-8), h.get("momentum", 0.0)
        sq = self.zeros("square_avg")
        sq[...] = alpha * sq + (1 - alpha) * g * g
        var = sq
        if h.get("centered"):
            ga = self.zeros("grad_avg")
            ga[...] = alpha * ga + (1 - alpha) * g
            var = sq - ga * ga
        avg = np.sqrt(var + eps) if h.get("eps_inside_sqrt") else np.sqrt(var) + eps
        if mom > 0:
            buf = self.zeros("momentum_buffer")
            buf[...] = mom * buf + g / avg
            p -= h["lr"] * (g / avg + mom * buf if h.get("nesterov") else buf)
        else:
            p -= h["lr"] * g / avg

    def _adadelta(self, p, g, t, h):
        rho, eps = h.get("rho", 0.9), h.get("eps", 1e-6)
        sq, acc = self.zeros("square_avg"), self.zeros("acc_delta")
        sq[...] = rho * sq + (1 - rho) * g * g
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc[...] = rho * acc + (1 - rho) * delta * delta
        p -= h.get("lr", 1.0) * delta

    def _adam(self, p, g, t, h):
        b1, b2 = h.get("betas", (0.9, 0.999))
        eps = h.get("eps", 1e-8)
        m, v = self.zeros("exp_avg"), self.zeros("exp_avg_sq")
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        second = v
        if h.get("amsgrad"):
            vmax = self.zeros("max_exp_avg_sq")
            vmax[...] = np.maximum(vmax, v)
            second = vmax
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        p -= (h["lr"] / bc1) * m / (np.sqrt(second) / math.sqrt(bc2) + eps)

    _adamw = _adam

    def _adamax(self, p, g, t, h):
        b1, b2 = h.get("betas", (0.9, 0.999))
        m, u = self.zeros("exp_avg"), self.zeros("exp_inf")
        m[...] = b1 * m + (1 - b1) * g
        u[...] = np.maximum(b2 * u, np.abs(g) + h.get("eps", 1e-8))
        p -= (h["lr"] / (1 - b1**t)) * m / u

    def _nadam(self, p, g, t, h):
        b1, b2 = h.get("betas", (0.9, 0.999))
        md = h.get("momentum_decay", 4e-3)
        m, v = self.zeros("exp_avg"), self.zeros("exp_avg_sq")
        mu = b1 * (1 - 0.5 * 0.96 ** (t * md))
        mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * md))
        self.mu_product *= mu
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v / (1 - b2**t)) + h.get("eps", 1e-8)
        lr = h["lr"]
        p -= lr * (1 - mu) / (1 - self.mu_product) * g / denom
        p -= lr * mu_next / (1 - self.mu_product * mu_next) * m / denom

    def _radam(self, p, g, t, h):
        b1, b2 = h.get("betas", (0.9, 0.999))
        m, v = self.zeros("exp_avg"), self.zeros("exp_avg_sq")
        m[...] = b1 * m + (1 - b1) * g
        v[...] = b2 * v + (1 - b2) * g * g
        bc1, bc2 = 1 - b1**t, 1 - b2**t
        rho_inf = 2 / (1 - b2) - 1
        rho_t = rho_inf - 2 * t * b2**t / bc2
        if rho_t > 5:
            r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
            p -= h["lr"] * (m / bc1) * r * math.sqrt(bc2) / (np.sqrt(v) + h.get("eps", 1e-8))
        else:
            p -= h["lr"] * m / bc1

    def _lion(self, p, g, t, h):
        b1, b2 = h.get("betas", (0.9, 0.99))
        m = self.zeros("exp_avg")
        c = b1 * m + (1 - b1) * g
        p -= h["lr"] * np.sign(c)
        m[...] = b2 * m + (1 - b2) * g

    def _ademamix(self, p, g, t, h):
        b1, b2, b3 = h.get("betas", (0.9, 0.999, 0.9999))
        both = h.get("t_alpha_beta3")  # one length for both warm-ups
        alpha, t_alpha, t_beta3 = h.get("alpha", 5.0), h.get("t_alpha", both), h.get("t_beta3", both)
        if t_alpha is not None:
            alpha = min(t * alpha / t_alpha, alpha)
        if t_beta3 is not None:  # linear in the half-life 1 / log(beta), from beta1 to beta3
            s = t / t_beta3
            b3 = min(math.exp(math.log(b1) * math.log(b3) / ((1 - s) * math.log(b3) + s * math.log(b1))), b3)
        m1, v, m2 = self.zeros("exp_avg"), self.zeros("exp_avg_sq"), self.zeros("exp_avg_slow")
        m1[...] = b1 * m1 + (1 - b1) * g
        m2[...] = b3 * m2 + (1 - b3) * g
        v[...] = b2 * v + (1 - b2) * g * g
        denom = np.sqrt(v) / math.sqrt(1 - b2**t) + h.get("eps", 1e-8)
        p -= h.get("lr", 1e-3) * (m1 / (1 - b1**t) + alpha * m2) / denom

    def _schedule_free(self, p, g, t, h, beta1, direction):
        k = t - 1
        if t == 1:
            self.lr_max, self.weight_sum = -1.0, 0.0
            self.s["z"] = p.copy()
            if self.round_state is not None:
                self.s["z"] = self.round_state(self.s["z"])
        warmup = h.get("warmup_steps", 0)
        lr = h["lr"] * ((k + 1) / warmup if k < warmup else 1.0)
        self.lr_max = max(self.lr_max, lr)
        w = (k + 1) ** h.get("r", 0.0) * self.lr_max ** h.get("weight_lr_power", 2.0)
        self.weight_sum += w
        c = w / self.weight_sum if self.weight_sum else 0.0
        z = self.s["z"]
        u = direction + h.get("weight_decay", 0.0) * p
        p[...] = p + c * (z - p) + lr * (beta1 * (1 - c) - 1) * u
        z -= lr * u

    def _sgdschedulefree(self, p, g, t, h):
        self._schedule_free(p, g, t, h, h.get("momentum", 0.9), g)

    def _adamwschedulefree(self, p, g, t, h):
        b1, b2 = h.get("betas", (0.9, 0.999))
        v = self.zeros("exp_avg_sq")
        v[...] = b2 * v + (1 - b2) * g * g
        self._schedule_free(p, g, t, h, b1, g / (np.sqrt(v / (1 - b2**t)) + h.get("eps", 1e-8)))

    def to_x(self, beta1):
        """Schedule-Free's eval(): y -> x = y + (1 - 1/beta1) (z - y)."""
        return self.p + (1 - 1 / beta1) * (self.s["z"] - self.p)
