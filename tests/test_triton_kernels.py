"""Runs the Triton kernel tests in their own process under TRITON_INTERPRET=1 (CPU)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
FILES = sorted(str(p) for p in HERE.glob("*_triton.py"))


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") == "1", reason="already inside the interpreter run")
@pytest.mark.parametrize("path", FILES, ids=[Path(f).stem for f in FILES])
def test_triton_kernel_file_passes_under_interpreter(path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", path],
                          env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
