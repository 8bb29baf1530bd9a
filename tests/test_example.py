"""examples/train_digits.py trains to the accuracy it promises, with every optimizer (short runs)."""
import pathlib
import sys

import pytest

pytest.importorskip("sklearn")
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "examples"))
import train_digits  # noqa: E402


@pytest.mark.parametrize("optimizer", sorted(train_digits.OPTIMIZERS))
def test_trains_digits_above_95_percent(optimizer):
    accuracy, losses = train_digits.train(optimizer, epochs=15, verbose=False)
    assert accuracy >= 0.95
    assert losses[-1] < 0.5 * losses[0]


def test_command_line_writes_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "loss.png"
    accuracy = train_digits.main(["--optimizer", "adam", "--epochs", "3", "--plot", str(png)])
    assert png.stat().st_size > 1000 and 0 <= accuracy <= 1
    assert "test accuracy" in capsys.readouterr().out
