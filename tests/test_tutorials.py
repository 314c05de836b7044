"""The tutorials run top to bottom (in their short CI mode)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(f for f in os.listdir(os.path.join(ROOT, "tutorials")) if f.endswith(".py"))


def test_there_are_tutorials():
    assert "01_quickstart.py" in TUTORIALS


@pytest.mark.parametrize("name", TUTORIALS)
def test_tutorial_runs(name):
    env = dict(os.environ, CI="true")
    proc = subprocess.run([sys.executable, os.path.join("tutorials", name)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
