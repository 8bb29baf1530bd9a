"""Per-step host scalars of every optimizer, in float64: the only place they are computed.

Each function returns (variant, scalars): the rule's compile-time variant and its per-step
scalars in the order documented in csrc/fastopt/math/<rule>.h, which every backend consumes.
Kernels never call pow per element; bias corrections and step sizes come from here.
"""
import math

# Rule ids shared with FASTOPT_FOR_EACH_OPTIMIZER in csrc/fastopt/math/all.h.
SGD, ADAGRAD, RMSPROP, ADADELTA, ADAM, ADAMAX, NADAM, RADAM, LION = range(9)
RULE_NAMES = ("SGD", "Adagrad", "RMSprop", "Adadelta", "Adam", "Adamax", "NAdam", "RAdam", "Lion")

# Compile-time variants of each rule, by rule id (kNumVariants in the headers; a test checks).
NUM_VARIANTS = (5, 1, 6, 1, 2, 1, 1, 1, 1)
# Variant numbers of the rules that have several (see the headers).
SGD_PLAIN, SGD_MOMENTUM, SGD_NESTEROV, SGD_VELOCITY, SGD_VELOCITY_NESTEROV = range(5)
RMSPROP_CENTERED, RMSPROP_MOMENTUM, RMSPROP_NESTEROV = 1, 2, 4
ADAM_AMSGRAD = 1


def prologue(lr, weight_decay, decoupled, maximize, grad_scale):
    """(grad_scale, weight_decay, decay_factor) of the shared prologue.

    `grad_scale` already multiplies 1/loss_scale and the clip factor; maximize flips its sign,
    which is exact. The kernels add weight_decay * p to the gradient when weight_decay is nonzero,
    so decoupled decay passes 0 there and becomes the factor 1 - lr * weight_decay on p.
    """
    scale = -grad_scale if maximize else grad_scale
    if decoupled:
        return scale, 0.0, 1.0 - lr * weight_decay
    return scale, weight_decay, 1.0


def sgd(lr, momentum, dampening, nesterov, velocity_form, step):
    if momentum == 0:
        variant = SGD_PLAIN
    elif velocity_form:
        variant = SGD_VELOCITY_NESTEROV if nesterov else SGD_VELOCITY
    else:
        variant = SGD_NESTEROV if nesterov else SGD_MOMENTUM
    return variant, (lr, momentum, 1.0 - dampening, 1.0 if step == 1 else 0.0)


def adagrad(lr, lr_decay, eps, eps_inside_sqrt, step):
    clr = lr / (1.0 + (step - 1) * lr_decay)
    return 0, (clr, eps, 0.0) if eps_inside_sqrt else (clr, 0.0, eps)


def rmsprop(lr, alpha, eps, momentum, centered, nesterov, eps_inside_sqrt):
    variant = RMSPROP_CENTERED if centered else 0
    if momentum > 0:
        variant |= RMSPROP_NESTEROV if nesterov else RMSPROP_MOMENTUM
    eps_in, eps_out = (eps, 0.0) if eps_inside_sqrt else (0.0, eps)
    return variant, (lr, alpha, 1.0 - alpha, eps_in, eps_out, momentum)


def adadelta(lr, rho, eps):
    return 0, (lr, rho, 1.0 - rho, eps)


def adam(lr, beta1, beta2, eps, amsgrad, step):
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    variant = ADAM_AMSGRAD if amsgrad else 0
    return variant, (beta1, 1.0 - beta1, beta2, 1.0 - beta2, lr / bc1, math.sqrt(bc2), eps)


def adamax(lr, beta1, beta2, eps, step):
    return 0, (beta1, 1.0 - beta1, beta2, lr / (1.0 - beta1**step), eps)


def nadam_mu(beta1, momentum_decay, step):
    """mu_t of Dozat's momentum schedule."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def nadam(lr, beta1, beta2, eps, momentum_decay, step, mu_product_prev):
    """Also returns mu_product_t, the scalar state the caller keeps."""
    mu = nadam_mu(beta1, momentum_decay, step)
    mu_next = nadam_mu(beta1, momentum_decay, step + 1)
    mu_product = mu_product_prev * mu
    bc2 = 1.0 - beta2**step
    grad_coef = lr * (1.0 - mu) / (1.0 - mu_product)
    avg_coef = lr * mu_next / (1.0 - mu_product * mu_next)
    return 0, (beta1, 1.0 - beta1, beta2, 1.0 - beta2, bc2, eps, grad_coef, avg_coef), mu_product


def radam(lr, beta1, beta2, eps, step):
    bc1 = 1.0 - beta1**step
    bc2 = 1.0 - beta2**step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2**step / bc2
    rectified = rho_t > 5.0
    adaptive_step = 0.0
    if rectified:
        r = math.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
        adaptive_step = lr * r * math.sqrt(bc2) / bc1
    return 0, (beta1, 1.0 - beta1, beta2, 1.0 - beta2, 1.0 if rectified else 0.0, adaptive_step, lr / bc1, eps)


def lion(lr, beta1, beta2):
    return 0, (lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2)


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
