"""The CPU backends' thread count (affinity, container quota, ranks per node, overrides) and the
worker threads' promises: every piece done once, whatever the cores, after a fork, beside others."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fastopt
from fastopt import _threads
from conftest import random_arrays

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write(root, relative, text):
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota_is_the_smallest_on_the_path(tmp_path):
    write(tmp_path, "proc/self/cgroup", "0::/job/step\n")
    write(tmp_path, "sys/fs/cgroup/job/step/cpu.max", "max 100000\n")
    write(tmp_path, "sys/fs/cgroup/job/cpu.max", "150000 100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "400000 100000\n")
    assert _threads.cgroup_cpu_quota(str(tmp_path)) == 1.5


def test_cgroup_v1_quota(tmp_path):
    write(tmp_path, "proc/self/cgroup", "4:cpu,cpuacct:/docker/abc\n3:memory:/docker/abc\n")
    write(tmp_path, "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_quota_us", "300000\n")
    write(tmp_path, "sys/fs/cgroup/cpu/docker/abc/cpu.cfs_period_us", "100000\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_quota_us", "-1\n")
    write(tmp_path, "sys/fs/cgroup/cpu/cpu.cfs_period_us", "100000\n")
    assert _threads.cgroup_cpu_quota(str(tmp_path)) == 3.0


def test_no_quota(tmp_path):
    write(tmp_path, "proc/self/cgroup", "0::/\n")
    write(tmp_path, "sys/fs/cgroup/cpu.max", "max 100000\n")
    assert _threads.cgroup_cpu_quota(str(tmp_path)) is None
    assert _threads.cgroup_cpu_quota(str(tmp_path / "nothing-here")) is None


def test_default_is_the_smallest_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(_threads, "affinity_cpus", lambda: 8)
    write(tmp_path, "proc/self/cgroup", "0::/c\n")
    write(tmp_path, "sys/fs/cgroup/c/cpu.max", "250000 100000\n")
    threads, why = _threads.default_threads({}, str(tmp_path))
    assert threads == 2 and "quota of 2.5" in why and "8 CPUs" in why
    # Ranks on one node share what the process may use.
    assert _threads.default_threads({"OMPI_COMM_WORLD_LOCAL_SIZE": "2"}, str(tmp_path))[0] == 1
    threads, why = _threads.default_threads({"MPI_LOCALNRANKS": "3"}, str(tmp_path / "none"))
    assert threads == 2 and "3 ranks on this node (MPI_LOCALNRANKS)" in why
    assert _threads.default_threads({"FASTOPT_LOCAL_RANKS": "16"}, str(tmp_path / "none"))[0] == 1


def test_explicit_settings_win(tmp_path):
    env = {"FASTOPT_NUM_THREADS": "5", "OMP_NUM_THREADS": "3", "MPI_LOCALNRANKS": "4"}
    assert _threads.default_threads(env, str(tmp_path)) == (5, "FASTOPT_NUM_THREADS")
    assert _threads.default_threads({"OMP_NUM_THREADS": "3,2"}, str(tmp_path)) == (3, "OMP_NUM_THREADS")
    for bad in ("0", "two", "-1"):
        with pytest.raises(ValueError, match="FASTOPT_NUM_THREADS must be an integer >= 1"):
            _threads.default_threads({"FASTOPT_NUM_THREADS": bad}, str(tmp_path))


def run_python(code, **env):
    environ = {k: v for k, v in os.environ.items() if k not in ("FASTOPT_NUM_THREADS", "OMP_NUM_THREADS")}
    environ.update(env)
    environ["PYTHONPATH"] = os.pathsep.join([os.path.join(ROOT, "tests"), environ.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=environ, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_environment_sets_the_count_and_backends_say_why():
    out = run_python("""
        import fastopt
        info = fastopt.backends()["cpu"]
        print(fastopt.get_num_threads(), info["num_threads"], info["threads_from"])
        fastopt.set_num_threads(2)
        print(fastopt.get_num_threads(), fastopt.backends()["cpu"]["threads_from"])
    """, FASTOPT_NUM_THREADS="3")
    assert out.splitlines() == ["3 3 FASTOPT_NUM_THREADS", "2 set_num_threads()"]


def test_bad_environment_is_reported():
    out = run_python("""
        import fastopt
        print(fastopt.backends()["cpu"])
    """, FASTOPT_NUM_THREADS="many")
    assert "FASTOPT_NUM_THREADS must be an integer >= 1, got 'many'" in out


STEP_AND_COMPARE = """
    import numpy as np, fastopt
    from conftest import random_arrays
    def run(threads):
        fastopt.set_num_threads(threads)
        p, gs = random_arrays(1_000_003, np.float32, 7, 3)
        opt = fastopt.Adam(p, lr=0.01)
        for g in gs:
            opt.step(g, max_grad_norm=1.0)
        return p
    serial = run(1)
"""


def test_more_threads_than_cpus_give_the_serial_bits():
    # One CPU, eight threads, no spinning: the workers can only run when the caller sleeps or is
    # preempted; every piece must still be done exactly once.
    out = run_python(STEP_AND_COMPARE + """
    import os
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    fastopt._cpu.set_spin_microseconds(0)
    for _ in range(3):
        assert np.array_equal(run(8), serial)
    print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_steps_in_a_forked_child():
    # The child has none of the parent's worker threads; it must start its own, not wait for them.
    out = run_python(STEP_AND_COMPARE + """
    import os
    two = run(2)
    pid = os.fork()
    if pid == 0:
        os._exit(0 if np.array_equal(run(2), serial) else 3)
    _, status = os.waitpid(pid, 0)
    print(np.array_equal(two, serial), os.waitstatus_to_exitcode(status))
    """)
    assert out.strip() == "True 0"


@pytest.mark.parametrize("spin", [0, 30, 1000])
def test_spin_setting_keeps_the_bits(spin):
    cpu = pytest.importorskip("fastopt._cpu")
    before, before_threads = cpu.spin_microseconds(), fastopt.get_num_threads()
    try:
        results = []
        for threads in (1, 2, 3):
            fastopt.set_num_threads(threads)
            cpu.set_spin_microseconds(spin)
            p, gs = random_arrays(200_003, np.float32, 11, 2)
            opt = fastopt.SGD(p, lr=0.01, momentum=0.9)
            for g in gs:
                opt.step(g)
            results.append(p)
        assert all(np.array_equal(r, results[0]) for r in results)
    finally:
        cpu.set_spin_microseconds(before)
        fastopt.set_num_threads(before_threads)


def test_numba_threads_start_without_leaving_settings_behind():
    pytest.importorskip("numba")
    out = run_python("""
        import os, numpy as np, fastopt
        p, g = np.ones(100_000, np.float32), np.ones(100_000, np.float32)
        fastopt.SGD(p, lr=0.5, backend="numba").step(g)
        import numba
        print(np.all(p == 0.5), "GOMP_SPINCOUNT" in os.environ, os.environ.get("OMP_WAIT_POLICY"),
              numba.get_num_threads() == fastopt.backends()["numba"]["num_threads"])
    """)
    assert out.split() == ["True", "False", "None", "True"]
    # A policy the user chose is left to libgomp.
    out = run_python("""
        import os, numpy as np, fastopt
        fastopt.SGD(np.ones(10, np.float32), lr=0.5, backend="numba").step(np.ones(10, np.float32))
        print(os.environ["GOMP_SPINCOUNT"])
    """, GOMP_SPINCOUNT="12345")
    assert out.strip() == "12345"
