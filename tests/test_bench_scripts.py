"""The stand-alone scripts of bench/ run and print what their docs quote (short runs)."""
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "bench"))
import regression_state_dtype  # noqa: E402


def test_regression_script_trains_every_state_precision(capsys):
    regression_state_dtype.main(["--steps", "80", "--seeds", "1", "--window", "40"])
    rows = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
            if line.startswith("| ") and not line.startswith("| state")}
    assert set(rows) == {"float32", "8bit", "fp8"}
    # fp8 (E4M3) state diverges on this task at the script's learning rate (docs/quantized_states.md).
    for state in ("float32", "8bit"):
        first, second = (float(c) for c in rows[state].split("|")[2:4])
        assert second < first, f"{state}: the loss did not fall ({rows[state]})"
