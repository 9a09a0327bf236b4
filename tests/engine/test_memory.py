"""engine/memory: a feature cache that cannot fit is refused after its first image, with the numbers and a fix."""

from __future__ import annotations

import pytest
import torch

from histowsss.engine import memory
from histowsss.engine.memory import CacheTooLarge, check_cache_fits, free_bytes


def test_free_bytes_of_the_cpu_is_read():
    free = free_bytes(torch.device("cpu"))
    assert free is None or free > 0


def test_a_cache_that_cannot_fit_is_refused_with_the_fix(monkeypatch):
    monkeypatch.setattr(memory, "free_bytes", lambda device: 10 * 2**30)
    cpu = torch.device("cpu")
    check_cache_fits("train_irn", 2**20, [1.0] * 1000, cpu, "lower train_irn.copies")  # 1 GiB: fits
    with pytest.raises(CacheTooLarge, match=r"train_irn: caching features of 100000 images needs about 97\.7 GiB "
                                            r".*only 10\.0 GiB is free on cpu; lower train_irn.copies"):
        check_cache_fits("train_irn", 2**20, [1.0] * 100_000, cpu, "lower train_irn.copies")
    # extrapolated by pixels: a large first image among small tiles is not taken for 100000 large images
    check_cache_fits("train_irn", 2**20, [16.0] + [1.0] * 99_999, cpu, "x")
    monkeypatch.setattr(memory, "free_bytes", lambda device: None)  # unknown: no refusal
    check_cache_fits("train_irn", 2**20, [1.0] * 100_000, cpu, "x")


def _cgroup_v1(tmp_path, limits: dict[str, int | None], usage: int, inactive: int = 0):
    """A fake cgroup v1 memory tree: ``limits`` maps a group path (``""`` = the mount) to its limit (None = none)."""
    root = tmp_path / "cgroup"
    for rel, limit in limits.items():
        d = root / "memory" / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "memory.limit_in_bytes").write_text(f"{limit if limit is not None else 9223372036854771712}\n")
        (d / "memory.usage_in_bytes").write_text(f"{usage}\n")
        # the group's own page cache comes first; v1's usage is the subtree's, so total_inactive_file counts
        (d / "memory.stat").write_text(f"cache 5\ninactive_file 0\ntotal_inactive_file {inactive}\n")
    proc = tmp_path / "proc_cgroup"
    own = max(limits, key=len)
    proc.write_text(f"5:devices:/\n4:memory:/{own}\n0::/\n")
    return root, proc


def test_a_parent_cgroup_limit_binds_the_process(tmp_path):
    root, proc = _cgroup_v1(tmp_path, {"": None, "jobs": 8 * 2**30, "jobs/mine": None}, usage=3 * 2**30,
                            inactive=2**30)
    # the parent's 8 GiB limit, 3 GiB used of which 1 GiB reclaimable page cache
    assert memory.cgroup_available(root, proc) == 6 * 2**30


def test_no_cgroup_limit_means_no_number(tmp_path):
    root, proc = _cgroup_v1(tmp_path, {"": None, "jobs": None}, usage=2**30)
    assert memory.cgroup_available(root, proc) is None
    assert memory.cgroup_available(tmp_path / "absent", tmp_path / "absent_proc") is None


def test_cgroup_v2_limit_is_read_and_a_hidden_group_falls_back_to_the_mount(tmp_path):
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    (root / "memory.max").write_text(f"{4 * 2**30}\n")
    (root / "memory.current").write_text(f"{2**30}\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text("0::/not/visible/in/this/namespace\n")
    assert memory.cgroup_available(root, proc) == 3 * 2**30
    (root / "memory.max").write_text("max\n")
    assert memory.cgroup_available(root, proc) is None


def test_free_memory_of_the_cpu_is_capped_by_the_cgroup(monkeypatch):
    monkeypatch.setattr(memory, "_host_available", lambda: 20 * 2**30)
    monkeypatch.setattr(memory, "cgroup_available", lambda: 2 * 2**30)
    assert memory.free_bytes(torch.device("cpu")) == 2 * 2**30
    monkeypatch.setattr(memory, "cgroup_available", lambda: None)
    assert memory.free_bytes(torch.device("cpu")) == 20 * 2**30
