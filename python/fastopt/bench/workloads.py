"""What the benchmark measures: optimizers and their hyper-parameters, model shapes, BatchNorm shapes."""
import dataclasses

from ..rules import BUILTIN as _RULES


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    name: str    # the class name in fastopt, torch.optim and references.NUMPY_OPTIMIZERS
    hp: tuple    # constructor keywords shared by the three, as (name, value) pairs

    @property
    def kwargs(self):
        return dict(self.hp)


# Typical settings (each rule module's BENCH); weight decay on where it is the optimizer's usual
# setting (AdamW, decoupled-decay rules).
OPTIMIZERS = tuple(OptimizerSpec(name, hp) for rule in _RULES for name, hp in rule.BENCH)
OPTIMIZER_BY_NAME = {spec.name: spec for spec in OPTIMIZERS}

SIZES_FULL = (10_000, 1_000_000, 10_000_000, 64_000_000)
SIZES_QUICK = (10_000, 1_000_000)
OVERHEAD_SIZE = 1_000
MAX_GRAD_NORM = 1.0


def resnet50_shapes():
    """Parameter shapes of torchvision's ResNet-50 (161 tensors, 25,557,032 parameters)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    in_ch = 64
    for width, blocks in ((64, 3), (128, 4), (256, 6), (512, 3)):
        out_ch = width * 4
        for block in range(blocks):
            shapes += [(width, in_ch, 1, 1), (width,), (width,),
                       (width, width, 3, 3), (width,), (width,),
                       (out_ch, width, 1, 1), (out_ch,), (out_ch,)]
            if block == 0:  # projection shortcut
                shapes += [(out_ch, in_ch, 1, 1), (out_ch,), (out_ch,)]
            in_ch = out_ch
    shapes += [(1000, 2048), (1000,)]
    return shapes


def gpt2_small_shapes():
    """Parameter shapes of GPT-2 small (148 tensors, 124,439,808 parameters; tied output layer)."""
    d, vocab, ctx, layers = 768, 50257, 1024, 12
    shapes = [(vocab, d), (ctx, d)]
    for _ in range(layers):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    shapes += [(d,), (d,)]
    return shapes


def many_small_shapes():
    """100 tensors of 10,000 parameters: a small model where per-tensor dispatch dominates."""
    return [(100, 100)] * 100


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    shapes_fn: object
    optimizers: tuple   # names in OPTIMIZER_BY_NAME


MODELS = (
    ModelSpec("resnet50", resnet50_shapes, ("SGD", "Adam")),
    ModelSpec("gpt2-small", gpt2_small_shapes, ("Adam", "AdamW")),
    ModelSpec("100x10k", many_small_shapes, ("Adam",)),
)
MODELS_QUICK = ("100x10k",)


@dataclasses.dataclass(frozen=True)
class BatchNormSpec:
    name: str
    shape: tuple
    axis: int


BATCHNORM = (
    BatchNormSpec("(64,64,56,56) NCHW", (64, 64, 56, 56), 1),
    BatchNormSpec("(64,56,56,64) NHWC", (64, 56, 56, 64), -1),
    BatchNormSpec("(256,256,14,14) NCHW", (256, 256, 14, 14), 1),
    BatchNormSpec("(8192,1024)", (8192, 1024), 1),
)
BATCHNORM_QUICK = ("(8192,1024)",)
