"""tools/gpu_check.sh fails loudly, not with a skip, where there is no GPU: the part of it that
can run without one."""
import os
import pathlib
import subprocess
import sys

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parent.parent / "tools" / "gpu_check.sh"


def _run(tmp_path, nvidia_smi=None, cupy_available=None):
    """The script with PATH limited to /usr/bin and /bin (no nvcc there) plus, if given, a fake
    nvidia-smi printing `nvidia_smi`, and a fake cupy module whose is_available() says so."""
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    if nvidia_smi is not None:
        tool = fake_bin / "nvidia-smi"
        tool.write_text(f"#!/bin/sh\necho '{nvidia_smi}'\n")
        tool.chmod(0o755)
    env = {"PATH": f"{fake_bin}:/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path),
           "FASTOPT_GPU_CHECK_NO_INSTALL": "1"}
    if cupy_available is not None:
        (tmp_path / "cupy.py").write_text(f"def is_available():\n    return {cupy_available}\n")
        env["PYTHONPATH"] = str(tmp_path)
    return subprocess.run(["bash", str(SCRIPT), str(tmp_path / "out.json")], env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.skipif(any(os.access(os.path.join(d, "nvcc"), os.X_OK) for d in ("/usr/bin", "/bin")),
                    reason="nvcc in /usr/bin: the no-toolkit case cannot be made here")
def test_no_driver_fails(tmp_path):
    result = _run(tmp_path)
    assert result.returncode != 0
    assert "FAILED: no NVIDIA driver" in result.stderr


def test_no_device_fails(tmp_path):
    result = _run(tmp_path, nvidia_smi="| NVIDIA-SMI 550.54  Driver Version: 550.54  CUDA Version: 12.4 |",
                  cupy_available=False)
    assert result.returncode != 0, result.stderr
    assert "cupy.is_available() is False" in result.stderr
    assert "FAILED: CuPy finds no CUDA device" in result.stderr
    assert not (tmp_path / "out.json").exists()


def test_unsupported_cuda_version_fails(tmp_path):
    result = _run(tmp_path, nvidia_smi="CUDA Version: 11.8", cupy_available=True)
    assert result.returncode != 0
    assert "CUDA 11" in result.stderr
