"""The code base stays ruff-clean (configuration in pyproject.toml)."""

import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(shutil.which("ruff") is None and not os.path.exists(
    os.path.join(os.path.dirname(sys.executable), "ruff")), reason="ruff is not installed "
    "(pip install -e '.[test]')")
def test_ruff_check_passes():
    ruff = shutil.which("ruff") or os.path.join(os.path.dirname(sys.executable), "ruff")
    result = subprocess.run([ruff, "check", "--no-cache", ROOT], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
