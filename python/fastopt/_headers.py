"""Integer constants read from the C++ and CUDA sources, so that the Python backends use the
values the compiled kernels use, from the one place they are written."""
import os
import re

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_CONSTANT = re.compile(r"^\s*constexpr\s+(?:int|int64_t)\s+(k\w+)\s*=\s*([^;]+);", re.M)
_TERM = re.compile(r"^\s*(\d+)\s*(?:(<<|\*)\s*(\d+)\s*)?$")


def math_header(name):
    """The path of a header of fastopt/math: the copy shipped with the package, or, in a source
    tree that has not been built, the original."""
    for path in (os.path.join(_PACKAGE, "include", "fastopt", "math", name),
                 os.path.join(os.path.dirname(os.path.dirname(_PACKAGE)), "csrc", "fastopt", "math", name)):
        if os.path.exists(path):
            return path
    raise FileNotFoundError(f"fastopt/math/{name} is neither in the package nor in a source tree")


def constants(path):
    """{name: value} of the file's `constexpr int[64_t] kName = a;`, `= a << b;` or `= a * b;`
    (constants defined from other names are left out: a caller that needs one fails by name)."""
    with open(path) as f:
        text = f.read()
    found = {}
    for name, expr in _CONSTANT.findall(text):
        term = _TERM.match(expr)
        if term is None:
            continue
        a, op, b = term.groups()
        found[name] = int(a) if op is None else int(a) << int(b) if op == "<<" else int(a) * int(b)
    return found
