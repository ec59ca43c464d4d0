"""``tools/published_architectures.py`` without the public trees (which CI does not have): a
missing or wrong tree is named, the stand-ins for missing packages import but refuse to be
called, and EMA-max's offset table answers a traced point count."""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tools"))

import published_architectures as tool  # noqa: E402


def test_a_missing_tree_is_named(tmp_path):
    with pytest.raises(SystemExit, match="give --bibench DIR"):
        tool.check_tree("dfsmn", None)
    with pytest.raises(SystemExit, match=r"models/pointnet.py not found \(--bipointnet must be the root"):
        tool.check_tree("bipointnet", str(tmp_path))


def test_stand_ins_import_but_refuse_calls():
    name = "surely_not_installed_package_xyz"
    with tool.missing_packages_stood_in(name, f"{name}.sub"):
        from surely_not_installed_package_xyz.sub import Thing  # noqa: PLC0415

        with pytest.raises(RuntimeError, match="is a stand-in"):
            Thing()
    assert name not in sys.modules


def test_int_keyed_lookup_of_a_traced_size():
    import torch

    table = tool.IntKeyed({1024: -3.2041})
    assert table[torch.tensor(1024)] == -3.2041
    with pytest.raises(KeyError):
        table[torch.tensor(7)]
