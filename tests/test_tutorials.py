"""The tutorials run top to bottom (in their short CI mode)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(f for f in os.listdir(os.path.join(ROOT, "tutorials")) if f.endswith(".py"))


def test_there_are_tutorials():
    assert "01_quickstart.py" in TUTORIALS


# The tutorials that compile whole networks or tune are slow; CI runs them all the same.
SLOW = {"02_rebirth.py", "03_targets.py", "05_accuracy.py"}


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in TUTORIALS])
def test_tutorial_runs(name):
    env = dict(os.environ, CI="true")
    proc = subprocess.run([sys.executable, os.path.join("tutorials", name)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
