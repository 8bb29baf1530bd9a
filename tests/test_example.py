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


def test_ema_of_the_weights_is_evaluated(capsys):
    """--ema: the averaged weights classify as well as the live ones (within 3 points), and the
    live weights come back after their evaluation (the same accuracy as a run without EMA)."""
    accuracy = train_digits.main(["--optimizer", "adam", "--epochs", "8", "--ema", "0.99"])
    out = capsys.readouterr().out
    ema_accuracy = float(out.split("EMA of the weights")[1].split("test accuracy")[1].split()[0])
    assert ema_accuracy >= accuracy - 0.03 and ema_accuracy >= 0.9
    plain, _ = train_digits.train("adam", epochs=8, verbose=False)
    assert plain == accuracy
