"""How many threads the CPU backends use unless told, and why.

The host's core count is the wrong default wherever the process may not use every core: a CPU
affinity mask (taskset, a batch scheduler, a launcher that binds ranks), a container's CPU quota,
or several ranks of one job on the same node. Each thread beyond the cores the process really
gets makes a step slower, not faster, so the default is the smallest of those limits.
"""
import math
import os

# Launchers' variables for the number of ranks on this node (Open MPI, MPICH / Intel MPI, MVAPICH).
LOCAL_RANK_VARIABLES = ("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", "MV2_COMM_WORLD_LOCAL_SIZE")


def _read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _own_cgroups(root):
    """(version, path) of this process's cgroups, from /proc/self/cgroup."""
    text = _read(os.path.join(root, "proc/self/cgroup")) or ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            yield 2, path
        elif "cpu" in controllers.split(","):
            yield 1, path


def _ancestors(path):
    """The cgroup path and each of its parents up to the root: a quota anywhere above applies."""
    parts = [p for p in path.split("/") if p]
    for k in range(len(parts), -1, -1):
        yield "/".join(parts[:k])


def cgroup_cpu_quota(root="/"):
    """CPUs allowed by the CPU quota of this process's cgroup (v2 cpu.max, v1 cfs_quota_us), or None."""
    limits = []
    for version, path in _own_cgroups(root):
        for sub in _ancestors(path):
            if version == 2:
                fields = (_read(os.path.join(root, "sys/fs/cgroup", sub, "cpu.max")) or "").split()
                if len(fields) == 2 and fields[0] != "max":
                    limits.append(int(fields[0]) / int(fields[1]))
            else:
                base = os.path.join(root, "sys/fs/cgroup/cpu", sub)
                quota, period = _read(os.path.join(base, "cpu.cfs_quota_us")), _read(os.path.join(base, "cpu.cfs_period_us"))
                if quota and period and int(quota) > 0:
                    limits.append(int(quota) / int(period))
    return min(limits) if limits else None


def affinity_cpus():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _positive_int(name, text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {text!r}")
    return value


def local_ranks(environ):
    """(ranks of this job on this node, the variable that said so), or (1, None)."""
    for name in ("FASTOPT_LOCAL_RANKS",) + LOCAL_RANK_VARIABLES:
        if environ.get(name):
            return _positive_int(name, environ[name]), name
    return 1, None


def default_threads(environ=None, root="/"):
    """(threads, reason): the CPU backends' thread count when set_num_threads() was not called."""
    environ = os.environ if environ is None else environ
    for name in ("FASTOPT_NUM_THREADS", "OMP_NUM_THREADS"):
        if environ.get(name):
            # OMP_NUM_THREADS may list one count per nesting level: the first is ours.
            return _positive_int(name, environ[name].split(",")[0].strip()), name
    cpus = affinity_cpus()
    reasons = [f"{cpus} CPUs in the affinity mask"]
    quota = cgroup_cpu_quota(root)
    if quota is not None:
        reasons.append(f"a CPU quota of {quota:g}")
        cpus = min(cpus, max(1, math.floor(quota)))
    ranks, variable = local_ranks(environ)
    if ranks > 1:
        reasons.append(f"{ranks} ranks on this node ({variable})")
    return max(1, cpus // ranks), ", ".join(reasons)
