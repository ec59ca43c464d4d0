"""``tools/published_unchanged.py`` says what to pass when the BiBench tree is missing or is not
one, and exits 2 without a traceback."""

from __future__ import annotations

import os
import subprocess
import sys

TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "published_unchanged.py")


def run_tool(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True, timeout=300)


def test_missing_path_is_explained(tmp_path):
    result = run_tool(str(tmp_path / "nowhere"))
    assert result.returncode == 2
    assert "no such folder" in result.stderr and "BiBench" in result.stderr and "Traceback" not in result.stderr


def test_a_folder_that_is_not_bibench_is_explained(tmp_path):
    result = run_tool(str(tmp_path))
    assert result.returncode != 0
    assert "not an extracted BiBench tree" in result.stderr and "Traceback" not in result.stderr
