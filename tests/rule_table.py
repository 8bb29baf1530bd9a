"""The optimizers the tests run, one row per class: a new rule adds its row here and every test
that draws on the table runs it (docs/contributing.md). Each test names the fields it reads.

Fields of the feature tests that run a sample of the rules: functional ((state arrays of the
richest options, those options[, one-element state arrays]): the functional call the validation
tests corrupt), quantized_half (8-bit state with half params), quantized_ema (the EMA beside
8-bit state), sign_terms (a rule that steps by a sign: the two terms of its argument)."""
import fastopt

ROWS = {
    "SGD": dict(
        cases=[dict(lr=0.05), dict(lr=0.05, momentum=0.9),
               dict(lr=0.05, momentum=0.9, dampening=0.3, weight_decay=0.01),
               dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True),
               dict(lr=0.05, momentum=0.8, velocity_form=True),
               dict(lr=0.05, momentum=0.8, velocity_form=True, nesterov=True)],
        half=dict(lr=0.05, momentum=0.9, nesterov=True),
        bad=[(dict(momentum=-1), "momentum"), (dict(nesterov=True), "Nesterov"),
             (dict(momentum=0.9, dampening=0.5, velocity_form=True), "velocity_form")],
        sample=dict(lr=0.1, momentum=0.9),  # one of the rules the slower property tests sample
        torch=True,
        torch_cases=[dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=0.01),
                     dict(lr=0.05, momentum=0.9, nesterov=True, maximize=True)],
        group_cases=[(dict(lr=0.05, momentum=0.9, weight_decay=0.01), dict(lr=0.02, dampening=0.2), dict(momentum=0.0)),
                     (dict(lr=0.05, momentum=0.9, nesterov=True), dict(weight_decay=0.1), dict(maximize=True))],
        mpi=dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
        functional=(1, dict(momentum=0.9, step=2)),
        quantized_half=dict(lr=0.05, momentum=0.9),
    ),
    "Adagrad": dict(
        cases=[dict(lr=0.1), dict(lr=0.1, lr_decay=0.01, weight_decay=0.1, initial_accumulator_value=0.1),
               dict(lr=0.1, eps_inside_sqrt=True, eps=1e-6, maximize=True)],
        half=dict(lr=0.1),
        bad=[(dict(lr_decay=-1), "lr_decay"), (dict(initial_accumulator_value=-1), "initial_accumulator_value")],
        torch=True,
        torch_cases=[dict(lr=0.1, lr_decay=0.01, initial_accumulator_value=0.1)],
        group_cases=[(dict(lr=0.1, lr_decay=0.01), dict(lr=0.05, eps=1e-6), dict(weight_decay=0.1))],
        mpi=dict(lr=0.05, lr_decay=1e-3),
        functional=(1, dict(step=1)),
    ),
    "RMSprop": dict(
        cases=[dict(lr=0.01), dict(lr=0.01, centered=True, weight_decay=0.01), dict(lr=0.01, momentum=0.9),
               dict(lr=0.01, momentum=0.9, centered=True, eps_inside_sqrt=True),
               dict(lr=0.01, momentum=0.9, nesterov=True, maximize=True),
               dict(lr=0.01, momentum=0.5, nesterov=True, centered=True)],
        half=dict(lr=0.01, centered=True, momentum=0.5),
        bad=[(dict(nesterov=True), "nesterov")],
        torch=True,
        torch_cases=[dict(lr=0.01, momentum=0.9, centered=True, weight_decay=0.01)],
        group_cases=[(dict(lr=0.01, momentum=0.9), dict(centered=True, weight_decay=0.01),
                      dict(momentum=0.0, alpha=0.9))],
        mpi=dict(lr=1e-2, centered=True, momentum=0.5),
        functional=(3, dict(centered=True, momentum=0.9)),
    ),
    "Adadelta": dict(
        cases=[dict(), dict(lr=0.5, rho=0.95, weight_decay=0.01, maximize=True)],
        bad=[(dict(rho=1.5), "rho")],
        torch=True,
        torch_cases=[dict(lr=0.5, weight_decay=0.01)],
        group_cases=[(dict(lr=0.5), dict(rho=0.8), dict(weight_decay=0.01))],
        mpi=dict(lr=1.0),
        functional=(2, {}),
    ),
    "Adam": dict(
        cases=[dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.01),
               dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, maximize=True)],
        half=dict(lr=0.01),
        bad=[(dict(lr=-1), "lr"), (dict(betas=(0.9, 1.0)), "betas"), (dict(betas=(0.9,)), "betas")],
        sample=dict(lr=0.1),
        torch=True,
        torch_cases=[dict(lr=0.01, amsgrad=True, weight_decay=0.01)],
        group_cases=[(dict(lr=0.01), dict(lr=0.02, weight_decay=0.01), dict(amsgrad=True))],
        mpi=dict(lr=1e-2, amsgrad=True),
        functional=(3, dict(step=1, amsgrad=True)),
        quantized_half=dict(lr=0.01),
    ),
    "AdamW": dict(
        cases=[dict(lr=0.01), dict(lr=0.01, amsgrad=True, weight_decay=0.1)],
        half=dict(lr=0.01, amsgrad=True),
        bad=[(dict(eps=-1e-8), "eps")],
        torch=True,
        torch_cases=[dict(lr=0.01)],
        group_cases=[(dict(lr=0.01), dict(weight_decay=0.0), dict(amsgrad=True, betas=(0.8, 0.9)))],
        mpi=dict(lr=1e-2, weight_decay=0.1),
        functional=(3, dict(step=1, amsgrad=True)),
        quantized_half=dict(lr=0.01, amsgrad=True),
        quantized_ema=dict(lr=0.01),
    ),
    "Adamax": dict(
        cases=[dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, maximize=True)],
        torch=True,
        torch_cases=[dict(lr=0.01, weight_decay=0.01)],
        group_cases=[(dict(lr=0.01), dict(weight_decay=0.01), dict(lr=0.002))],
        mpi=dict(lr=1e-2),
        functional=(2, dict(step=1)),
    ),
    "NAdam": dict(
        cases=[dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
        bad=[(dict(momentum_decay=-1), "momentum_decay")],
        torch=True,
        torch_cases=[dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
        group_cases=[(dict(lr=0.01), dict(momentum_decay=0.01), dict(weight_decay=0.01, decoupled_weight_decay=True))],
        mpi=dict(lr=1e-2),
        functional=(2, dict(step=1), 1),  # and mu_product, one element
    ),
    "RAdam": dict(
        cases=[dict(lr=0.01), dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True, maximize=True)],
        torch=True,
        torch_cases=[dict(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True)],
        group_cases=[(dict(lr=0.01), dict(weight_decay=0.01), dict(weight_decay=0.01, decoupled_weight_decay=True))],
        mpi=dict(lr=1e-2),
        functional=(2, dict(step=1)),
    ),
    "Lion": dict(
        cases=[dict(lr=1e-3), dict(lr=1e-3, weight_decay=0.1, betas=(0.95, 0.98))],
        half=dict(lr=1e-3),
        bad=[(dict(betas=(1.1, 0.9)), "betas")],
        sample=dict(lr=0.1),
        torch=False,  # torch.optim has no such class
        bench_bytes=({}, 20),  # read p g m, write p m
        foreign_checkpoint="Adam",  # a class whose checkpoint this one refuses
        mpi=dict(lr=1e-3, weight_decay=0.1),
        mpi_checkpoint=("lion_bf16_sr", dict(lr=1e-3, stochastic_rounding=True, seed=3)),
        functional=(1, {}),
        quantized_half=dict(lr=1e-3),
        quantized_ema=dict(lr=1e-3),
        # Its update is lr * sign(a + b) of these two terms (state before the step, gradient):
        # where a + b is within float32 rounding of zero the sign may differ from float64's.
        sign_terms=lambda state, g, kwargs: (kwargs.get("betas", (0.9, 0.99))[0] * state["exp_avg"],
                                             (1 - kwargs.get("betas", (0.9, 0.99))[0]) * g),
    ),
    # The Schedule-Free rules' weight decay is their own (at y): the reference knows it (OWN_DECAY).
    "SGDScheduleFree": dict(
        quantized=False,  # z is an iterate of the weights, not a moving average: no 8-bit state
        group_schedule=True,  # the schedule (k) is the group's: a frozen array's next step differs
        cases=[dict(lr=0.5), dict(lr=0.5, momentum=0.8, weight_decay=0.05, warmup_steps=10),
               dict(lr=0.5, r=1.0, weight_lr_power=1.0, warmup_steps=7, maximize=True)],
        half=dict(lr=0.5, warmup_steps=5, weight_decay=0.01),
        bad=[(dict(momentum=0.0), "momentum"), (dict(momentum=1.0), "momentum"),
             (dict(warmup_steps=-1), "warmup_steps"), (dict(warmup_steps=2.5), "warmup_steps"),
             (dict(weight_lr_power=-1), "weight_lr_power"), (dict(r=float("inf")), "r")],
        torch=False,  # torch.optim has no such class: tests/test_schedule_free.py runs the package
        bench_bytes=({}, 20),  # read p g z, write p z
        foreign_checkpoint="SGD",
    ),
    "AdamWScheduleFree": dict(
        quantized=False,  # z is an iterate of the weights, not a moving average: no 8-bit state
        group_schedule=True,  # the schedule (k) is the group's: a frozen array's next step differs
        cases=[dict(lr=0.02), dict(lr=0.02, weight_decay=0.1, warmup_steps=20),
               dict(lr=0.02, betas=(0.8, 0.99), eps=1e-6, r=0.5, weight_lr_power=0.0, maximize=True)],
        half=dict(lr=0.02, warmup_steps=5, weight_decay=0.1),
        bad=[(dict(betas=(0.0, 0.999)), "betas"), (dict(eps=-1e-8), "eps"), (dict(lr=-1), "lr")],
        # No "sample": z - y is inf - inf for an infinite parameter, so it cannot stay infinite.
        torch=False,
        bench_bytes=({}, 28),  # read p g z v, write p z v
        foreign_checkpoint="AdamW",
    ),
    "AdEMAMix": dict(
        # weight_decay given in every case: the reference's default is 0, the class's 1e-2.
        cases=[dict(lr=0.01, weight_decay=1e-2), dict(lr=0.01, weight_decay=0.1, alpha=2.0, t_alpha=30, t_beta3=40),
               dict(lr=0.01, betas=(0.8, 0.99, 0.999), t_alpha_beta3=25, weight_decay=0.0, maximize=True)],
        half=dict(lr=0.01, t_alpha=20, t_beta3=20, weight_decay=1e-2),
        bad=[(dict(betas=(0.9, 0.999)), "betas"), (dict(betas=(0.9, 0.999, 1.0)), "betas"),
             (dict(alpha=-1), "alpha"), (dict(t_alpha=0), "t_alpha"), (dict(eps=-1.0), "eps"),
             (dict(t_alpha=10, t_alpha_beta3=20), "t_alpha_beta3"),
             (dict(betas=(0.0, 0.999, 0.9999), t_beta3=10), "beta1")],
        sample=dict(lr=0.01),
        torch=False,  # tests/test_ademamix.py runs pytorch_optimizer's
        bench_bytes=({}, 36),  # read p g m1 v m2, write p m1 v m2
        foreign_checkpoint="Adam",
    ),
}


def cls(name):
    return getattr(fastopt, name)


def rows(field):
    """(class, value) of every row that has `field`, in table order."""
    return [(cls(name), row[field]) for name, row in ROWS.items() if field in row]


def names(field, value=True):
    return [name for name, row in ROWS.items() if row.get(field) == value]
