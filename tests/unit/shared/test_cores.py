from __future__ import annotations

from pathlib import Path

import pytest

from shared.cores import cpu_quota_cores


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _v1(tmp_path: Path, quota: str, *, parent_quota: str = "-1", container: bool = False) -> tuple[Path, Path]:
    """A cgroup-v1 layout: the cpu hierarchy mounted at tmp/sys/cpu,cpuacct, the process in /edge/app."""
    proc, mount = tmp_path / "proc", tmp_path / "sys" / "cpu,cpuacct"
    root = "/edge/app" if container else "/"
    _write(
        proc / "cgroup",
        "12:pids:/edge/app\n4:cpu,cpuacct:/edge/app\n3:memory:/edge/app\n1:name=systemd:/edge/app\n0::/\n",
    )
    _write(
        proc / "mountinfo",
        f"25 20 0:22 / {tmp_path}/sys rw,relatime - tmpfs tmpfs rw\n"
        f"30 25 0:27 {root} {mount} rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n"
        f"31 25 0:28 {root} {tmp_path}/sys/memory rw,nosuid - cgroup cgroup rw,memory\n",
    )
    app = mount if container else mount / "edge" / "app"
    for directory, q in ((app, quota),) + (() if container else ((mount / "edge", parent_quota), (mount, "-1"))):
        _write(directory / "cpu.cfs_quota_us", f"{q}\n")
        _write(directory / "cpu.cfs_period_us", "4000\n")
        _write(directory / "cgroup.procs", "")
    return proc, tmp_path / "nowhere"


def _v2(tmp_path: Path, cpu_max: str, *, parent_max: str = "max 100000") -> tuple[Path, Path]:
    proc, mount = tmp_path / "proc", tmp_path / "unified"
    _write(proc / "cgroup", "0::/system.slice/edge.service\n")
    _write(proc / "mountinfo", f"35 24 0:30 / {mount} rw,nosuid shared:9 - cgroup2 cgroup2 rw,nsdelegate\n")
    for directory, text in (
        (mount / "system.slice" / "edge.service", cpu_max),
        (mount / "system.slice", parent_max),
    ):
        _write(directory / "cpu.max", f"{text}\n")
        _write(directory / "cgroup.procs", "")
    _write(mount / "cgroup.procs", "")  # NOTE: the root cgroup has no cpu.max
    return proc, tmp_path / "nowhere"


def test_cgroup_v1_quota_over_period_is_the_quota_in_cores(tmp_path: Path) -> None:
    assert cpu_quota_cores(*_v1(tmp_path, "1000")) == 0.25


def test_cgroup_v1_minus_one_is_unlimited(tmp_path: Path) -> None:
    assert cpu_quota_cores(*_v1(tmp_path, "-1")) is None


def test_cgroup_v1_a_parents_smaller_quota_caps_the_child(tmp_path: Path) -> None:
    assert cpu_quota_cores(*_v1(tmp_path, "8000", parent_quota="2000")) == 0.5


def test_cgroup_v1_inside_a_container_its_own_cgroup_is_the_mount_root(tmp_path: Path) -> None:
    assert cpu_quota_cores(*_v1(tmp_path, "6000", container=True)) == 1.5


def test_cgroup_v2_cpu_max(tmp_path: Path) -> None:
    assert cpu_quota_cores(*_v2(tmp_path, "50000 100000")) == 0.5


@pytest.mark.parametrize("cpu_max", ["max 100000", "max", "garbage here", ""])
def test_cgroup_v2_max_or_nonsense_is_unlimited(tmp_path: Path, cpu_max: str) -> None:
    assert cpu_quota_cores(*_v2(tmp_path, cpu_max)) is None


def test_cgroup_v2_a_parents_quota_counts(tmp_path: Path) -> None:
    assert cpu_quota_cores(*_v2(tmp_path, "max 100000", parent_max="200000 100000")) == 2.0


def test_without_mountinfo_the_usual_paths_are_read(tmp_path: Path) -> None:
    proc, sys_fs_cgroup = tmp_path / "proc", tmp_path / "sys" / "fs" / "cgroup"
    _write(proc / "cgroup", "0::/\n")
    _write(sys_fs_cgroup / "cpu.max", "150000 100000\n")
    assert cpu_quota_cores(proc, sys_fs_cgroup) == 1.5
    _write(proc / "cgroup", "3:cpu,cpuacct:/\n")
    _write(sys_fs_cgroup / "cpu,cpuacct" / "cpu.cfs_quota_us", "25000\n")
    _write(sys_fs_cgroup / "cpu,cpuacct" / "cpu.cfs_period_us", "100000\n")
    assert cpu_quota_cores(proc, sys_fs_cgroup) == 0.25


def test_unreadable_is_unlimited(tmp_path: Path) -> None:
    assert cpu_quota_cores(tmp_path / "no-proc", tmp_path / "no-sys") is None
