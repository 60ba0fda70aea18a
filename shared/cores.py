"""The cores this process may run on, and the CPU time its cgroup lets it spend."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = ["available_cores", "cpu_quota_cores"]


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and ``taskset`` narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # NOTE: not on macOS or Windows
        return os.cpu_count() or 1


def cpu_quota_cores(proc: Path = Path("/proc/self"), sys_fs_cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """This process's CPU quota in cores (``docker run --cpus 0.5``: 0.5), or None when unlimited or unreadable.

    Read from the cgroup the process is in (``proc/cgroup``), found where ``proc/mountinfo`` says its
    hierarchy is mounted (else under ``sys_fs_cgroup``): cgroup v2's ``cpu.max`` (``max 100000`` is
    unlimited), or cgroup v1's ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` (-1 is unlimited). A parent
    cgroup's quota caps its children too, so the smallest on the way up to the hierarchy's root counts.
    """
    try:
        memberships = (proc / "cgroup").read_text().splitlines()
    except OSError:
        return None
    try:
        mounts = (proc / "mountinfo").read_text().splitlines()
    except OSError:
        mounts = []
    quotas = []
    for line in memberships:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hierarchy, controllers, path = parts
        if hierarchy == "0" and controllers == "":
            found = _cgroup_dir(mounts, path, v2=True) or _fallback_dir(sys_fs_cgroup, path)
            quotas += _walk_up(*found, _v2_quota)
        elif "cpu" in controllers.split(","):
            roots = (sys_fs_cgroup / "cpu", sys_fs_cgroup / "cpu,cpuacct", sys_fs_cgroup / "cpuacct,cpu")
            root = next((r for r in roots if r.is_dir()), roots[0])
            found = _cgroup_dir(mounts, path, v2=False) or _fallback_dir(root, path)
            quotas += _walk_up(*found, _v1_quota)
    return min(quotas) if quotas else None


def _cgroup_dir(mounts: list[str], path: str, *, v2: bool) -> tuple[Path, Path] | None:
    """The mount point of the cgroup hierarchy (v2, or v1's with the ``cpu`` controller) and the directory of
    ``path`` in it (relative to the mount's root: inside a container the mount's root is the container's
    cgroup), from ``/proc/self/mountinfo`` lines."""
    for line in mounts:
        fields, _, tail = line.partition(" - ")
        before, after = fields.split(), tail.split()
        if len(before) < 5 or len(after) < 3:
            continue
        root, mount_point = before[3], Path(before[4])
        fs_type, options = after[0], after[2].split(",")
        if (v2 and fs_type == "cgroup2") or (not v2 and fs_type == "cgroup" and "cpu" in options):
            inside = path.startswith(root)
            relative = os.path.relpath(path, root) if inside else "."
            return mount_point, mount_point if relative == "." else mount_point / relative
    return None


def _fallback_dir(root: Path, path: str) -> tuple[Path, Path]:
    """Without ``mountinfo``: the usual mount point, and ``path`` in it if that exists (else the root: a
    container's own cgroup is mounted as the root)."""
    directory = root / path.strip("/")
    return root, directory if directory.is_dir() else root


def _walk_up(mount_point: Path, directory: Path, read: Callable[[Path], float | None]) -> list[float]:
    """The quotas of ``directory`` and its parents up to ``mount_point`` (the hierarchy's root) that set one."""
    quotas = []
    for _ in range(len(directory.parts) + 1):  # NOTE: bounded, whatever the paths
        quota = read(directory)
        if quota is not None:
            quotas.append(quota)
        if directory == mount_point or mount_point not in directory.parents:
            break
        directory = directory.parent
    return quotas


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _v2_quota(directory: Path) -> float | None:
    text = _read(directory / "cpu.max")
    if text is None:
        return None
    fields = text.split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    return _ratio(fields[0], fields[1])


def _v1_quota(directory: Path) -> float | None:
    quota, period = _read(directory / "cpu.cfs_quota_us"), _read(directory / "cpu.cfs_period_us")
    if quota is None or period is None:
        return None
    return _ratio(quota, period)


def _ratio(quota: str, period: str) -> float | None:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None
