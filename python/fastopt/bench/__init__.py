"""fastopt's benchmark harness (`python -m fastopt bench`).

Each kernel is checked against a float64 NumPy reference, then timed (median of repeats after a
warm-up) alongside a streaming loop with its memory access pattern, which gives the bandwidth
limit in the same run; NumPy in-place ufuncs and torch.optim / torch's batch_norm (when torch is
installed) are timed on the same data for comparison.
"""
from .impls import CheckFailed
from .runner import Config, headline_text, markdown_table, run

__all__ = ["CheckFailed", "Config", "run", "markdown_table", "headline_text", "main"]


def main(argv=None):
    from .cli import main as cli_main

    return cli_main(argv)
