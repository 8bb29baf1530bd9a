"""The registry of optimizer rules: one module per rule holds everything Python knows about it
(docs/contributing.md). Rule ids are positions in RULE_MODULES; CMakeLists.txt reads the same
tuple to compile each rule's kernels, and the headers' struct names from csrc/fastopt/math.

A rule module defines: NAME (its C++ struct, also its main class's name), NUM_VARIANTS, STATES
(every state array name, in kernel slot order), Scalars (a named tuple of the host scalars in
kernel order), host_scalars, numba_update (the per-element mirror, reading Scalars by name),
CLASSES and FUNCTIONS (the public optimizers and functional entry points), NUMPY_BASELINES
(class name -> NumPy optimizer) and BENCH ((class name, hyper-parameters) the benchmark runs).
Optional: TORCH_REFERENCES (class name -> "package.Class", a torch optimizer outside torch.optim
the benchmark times as its torch reference), BITSANDBYTES (class name -> the name of its 8-bit
twin in bitsandbytes.optim: the quantized-state benchmark and tests compare with it), GRADLESS_VARIANTS, the variants whose header says reads_grad(v) is false (they are
launched with param in the gradient slot, typed as param).
"""
import importlib

# Kernel order: a rule's id is its position. CMakeLists.txt parses this tuple.
RULE_MODULES = ("sgd", "adagrad", "rmsprop", "adadelta", "adam", "adamax", "nadam", "radam", "lion",
                "schedule_free", "ademamix")

RULES = []


def register(rule):
    """Gives `rule` (a module or namespace with the fields above) the next id. Rules outside
    RULE_MODULES have no compiled kernels: only the Numba backend runs them."""
    rule.ID = len(RULES)
    for cls in rule.CLASSES:
        cls._rule = rule.ID
    RULES.append(rule)
    return rule


def unregister(rule):
    """Removes the last registered rule (a rule registered at run time, e.g. by a test)."""
    if not RULES or RULES[-1] is not rule:
        raise ValueError("only the last registered rule can be removed")
    RULES.pop()


for _name in RULE_MODULES:
    register(importlib.import_module(f".{_name}", __name__))

BUILTIN = tuple(RULES)
RULE_NAMES = tuple(r.NAME for r in BUILTIN)
NUM_VARIANTS = tuple(r.NUM_VARIANTS for r in BUILTIN)
MAX_STATES = max(len(r.STATES) for r in BUILTIN)
MAX_SCALARS = max(len(r.Scalars._fields) for r in BUILTIN)
BY_NAME = {r.NAME: r for r in BUILTIN}


def classes():
    return tuple(cls for r in BUILTIN for cls in r.CLASSES)


def functions():
    return tuple(fn for r in BUILTIN for fn in r.FUNCTIONS)
