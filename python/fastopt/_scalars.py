"""Per-step host scalars shared by every rule, in float64: the prologue, the rounding seed and
the clip factor. Each rule's own scalars come from its module in fastopt.rules (host_scalars),
in the order of its header in csrc/fastopt/math; kernels never call pow per element.
"""


def __getattr__(name):
    """RULE_NAMES and NUM_VARIANTS, from the registry (fastopt.rules; imported late: it imports us)."""
    if name in ("RULE_NAMES", "NUM_VARIANTS"):
        from . import rules
        return getattr(rules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def prologue(lr, weight_decay, decoupled, maximize, grad_scale):
    """(grad_scale, weight_decay, decay_factor) of the shared prologue.

    `grad_scale` already multiplies 1/loss_scale and the clip factor; maximize flips its sign,
    which is exact. The kernels add weight_decay * p to the gradient when weight_decay is nonzero,
    so decoupled decay passes 0 there and becomes the factor 1 - lr * weight_decay on p.
    decoupled=None: the rule applies weight_decay itself (Schedule-Free), so the prologue's is off.
    """
    scale = -grad_scale if maximize else grad_scale
    if decoupled is None:
        return scale, 0.0, 1.0
    if decoupled:
        return scale, 0.0, 1.0 - lr * weight_decay
    return scale, weight_decay, 1.0


def step_seed(seed, step):
    """A 32-bit stochastic-rounding seed for each (seed, step): a fixed integer mix, so a run is
    reproducible and every step draws fresh bits."""
    x = (seed * 0x9E3779B1 + step * 0x85EBCA77 + 0x165667B1) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x2C1B3C6D) & 0xFFFFFFFF
    x ^= x >> 12
    return x


def clip_factor(norm, max_norm):
    """The clip factor of docs/algorithms.md: max_norm / (norm + 1e-6) when norm > max_norm, else 1."""
    return max_norm / (norm + 1e-6) if norm > max_norm else 1.0
