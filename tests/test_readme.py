"""The README's Python examples run as written."""
import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_examples():
    assert len(python_blocks()) >= 2


def test_readme_examples_run():
    pytest.importorskip("ml_dtypes")
    namespace = {}
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), namespace)


def test_readme_examples_run_one_by_one():
    """Each block runs on its own, as a reader pastes it."""
    pytest.importorskip("ml_dtypes")
    for block in python_blocks():
        exec(compile(block, str(README), "exec"), {})
