"""fastopt.distributed under mpiexec: each test launches a worker script of tests/mpi/ on N ranks
(oversubscribed, one thread each) with a timeout, so that a deadlock fails instead of hanging.
Each worker groups many checks and prints 'OK <n> checks' on every rank."""
import os
import pathlib
import re
import shutil
import subprocess
import sys

import pytest

import fastopt

pytest.importorskip("mpi4py")

ROOT = pathlib.Path(__file__).resolve().parent.parent
WORKERS = ROOT / "tests" / "mpi"
# The ranks import the fastopt this process tests (an installed wheel or the in-place build), not
# whatever python/ holds: a source tree without the extension would run them on Numba.
PACKAGE_PARENT = pathlib.Path(fastopt.__file__).resolve().parent.parent
MPIEXEC = shutil.which("mpiexec") or shutil.which("mpiexec", path=str(pathlib.Path(sys.executable).parent))
if MPIEXEC is None:
    pytest.skip("no mpiexec (pip install mpich)", allow_module_level=True)


def launch(worker, ranks, *args, timeout=120, expect_ok=True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(PACKAGE_PARENT),
               # Oversubscribed ranks must yield the core while they wait, or they spin each other out.
               MPIR_CVAR_ENABLE_HEAVY_YIELD="1")
    cmd = [MPIEXEC, "-n", str(ranks), sys.executable, "-m", "mpi4py", str(WORKERS / worker), *map(str, args)]
    if not expect_ok:
        return _run(cmd, env, worker, ranks, timeout).stdout
    done = _run(cmd, env, worker, ranks, timeout)
    oks = re.findall(r"OK \d+ checks", done.stdout)  # ranks' lines may interleave
    assert len(oks) == ranks, f"{worker}: {len(oks)} of {ranks} ranks reported OK:\n{done.stdout[-6000:]}"
    return done.stdout


def _run(cmd, env, worker, ranks, timeout):
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{worker} on {ranks} ranks did not finish in {timeout} s (deadlock?):\n"
                    f"{(exc.stdout or b'')[-3000:]!r}\n{(exc.stderr or b'')[-3000:]!r}")
    out = done.stdout + done.stderr
    assert done.returncode == 0, f"{worker} on {ranks} ranks failed:\n{out[-6000:]}"
    return done


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_sharded_optimizers_equal_one_process(ranks):
    launch("worker_optim.py", ranks)


@pytest.mark.parametrize("ranks", [2, 3])
def test_bad_input_raises_on_every_rank(ranks):
    launch("worker_errors.py", ranks, timeout=60)


@pytest.mark.parametrize("ranks", [1, 3, 4])
def test_sync_batch_norm_equals_batch_norm_on_the_whole_batch(ranks):
    launch("worker_syncbn.py", ranks)


def test_checkpoint_saved_at_3_ranks_continues_at_2_and_1(tmp_path):
    launch("worker_checkpoint.py", 3, "save", tmp_path)
    for ranks in (2, 1):
        launch("worker_checkpoint.py", ranks, "load", tmp_path)


def _gpus():
    try:
        import cupy
        from cupy.cuda import nccl  # noqa: F401
        return cupy.cuda.runtime.getDeviceCount() if cupy.is_available() else 0
    except Exception:
        return 0


@pytest.mark.cuda
@pytest.mark.skipif(_gpus() == 0, reason="no CUDA device with CuPy and NCCL")
def test_nccl_transport_equals_one_gpu():
    launch("worker_nccl.py", min(_gpus(), 2), timeout=300)  # NCCL wants one GPU per rank


def test_example_trains_data_parallel_like_one_process():
    pytest.importorskip("sklearn")
    sys.path.insert(0, str(ROOT / "examples"))
    import train_digits

    accuracy, _ = train_digits.train("adam", epochs=10, verbose=False)
    out = launch(ROOT / "examples" / "train_digits.py", 2, "--distributed", "--epochs", "10", expect_ok=False)
    found = re.search(r"test accuracy ([0-9.]+) after 10 epochs on 2 ranks", out)
    assert found, out
    assert float(found.group(1)) >= 0.95 and abs(float(found.group(1)) - accuracy) <= 0.01


def test_benchmark_counts_the_bytes_of_the_formula(tmp_path):
    out = tmp_path / "distributed.md"
    env = dict(os.environ, PYTHONPATH=str(PACKAGE_PARENT))
    subprocess.run([sys.executable, str(ROOT / "bench" / "bench_distributed.py"), "--ranks", "1,2", "--size",
                    str(4 * 8192), "--steps", "2", "--out", str(out)], env=env, check=True, timeout=120,
                   capture_output=True)
    import json

    rows = json.loads(out.with_suffix(".json").read_text())
    two = [r for r in rows if r["ranks"] == 2]
    assert len(two) == 2 and all(abs(r["bytes_per_step"] - r["formula"]) <= 8 * 4 for r in two), two
    assert all(r["state_bytes_max"] == r["state_bytes_unsharded"] // 2 for r in two)
