"""The README's settings table names settings that exist, for the services it names, with their defaults.

Each row of the Configuration table names settings (column 1), the services that have them (column 2: ``both``
is edge and cloud) and their defaults (column 3). A default is either a value (``2``, ``20 MiB``, ``40 M``,
```fp16```, ``off``, ``unset``), one per setting (``2, 15, 30``) or per service (``128 MiB / 256 MiB / 64 MiB``,
``edge 5, cloud 65``), or a description of what is computed at startup (``the model's``), for which the code's
default must be empty. The reverse holds too: every setting of the edge and the cloud is in the table, and every
setting of the torch-free edge is named in its section.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from cloud_service.settings import CloudSettings
from edge_lite.settings import EdgeLiteSettings
from edge_service.settings import EdgeSettings
from shared.units import parse_bandwidth, parse_duration

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
TABLE = README[README.index("| setting | service | default | meaning |") : README.index("## Command line")]
EDGE_LITE = README[README.index("### The torch-free edge") : README.index("## Threads: sharing a host")]
CLASSES: dict[str, type[BaseSettings]] = {"edge": EdgeSettings, "cloud": CloudSettings, "edge_lite": EdgeLiteSettings}
UNITS = {"MiB": 2**20, "GiB": 2**30, "M": 10**6}
_NOT_A_VALUE = object()


def _rows() -> list[tuple[list[str], list[str], str]]:
    rows = []
    for line in TABLE.splitlines()[2:]:
        if not line.startswith("| `"):
            continue
        names_cell, services_cell, default_cell = (cell.strip() for cell in line.split(" | ")[:3])
        names = re.findall(r"`([A-Z][A-Z0-9_]*)`", names_cell)
        services = re.findall(r"both|edge_lite|edge|cloud", services_cell)
        services = [s for word in services for s in (("edge", "cloud") if word == "both" else (word,))]
        rows.append((names, services, default_cell))
    return rows


ROWS = _rows()


def _value(text: str, name: str) -> Any:
    """What a default's text says, or ``_NOT_A_VALUE`` when it describes a computed default."""
    text = text.strip()
    if text in ("unset", "none"):
        return None
    if text in ("off", "false", "`false`"):
        return False
    if text in ("true", "`true`"):
        return True
    if number := re.fullmatch(r"([\d.]+)(?: (MiB|GiB|M))?", text):
        return float(number[1]) * UNITS.get(number[2] or "", 1)
    if quoted := re.fullmatch(r"`([^`]+)`", text):
        if name == "LINK_BANDWIDTH":
            return parse_bandwidth(quoted[1])
        if name == "LINK_RTT":
            return parse_duration(quoted[1])
        return quoted[1]
    return _NOT_A_VALUE


def _documented_defaults(names: list[str], services: list[str], cell: str) -> dict[tuple[str, str], Any]:
    """(service, setting) -> the default the cell states for it."""
    parts = [cell] if len(names) == 1 else cell.split(", ")
    if len(parts) != len(names):
        parts = [cell] * len(names)
    out: dict[tuple[str, str], Any] = {}
    for name, part in zip(names, parts, strict=True):
        labelled = dict(re.findall(r"(edge_lite|edge|cloud) ([\d.]+)", part))
        labelled |= {service: value for value, service in re.findall(r"([\d.]+) (edge_lite|edge|cloud)", part)}
        positional = part.split(" / ")
        for service in services:
            if labelled:
                out[service, name] = _value(labelled[service], name)
            elif len(positional) == len(services) > 1:
                out[service, name] = _value(positional[services.index(service)], name)
            else:
                out[service, name] = _value(part, name)
    return out


def _code_default(service: str, name: str) -> Any:
    value = CLASSES[service].model_fields[name.lower()].default
    return getattr(value, "value", value)  # an enum's value


def test_the_table_is_parsed() -> None:
    assert len(ROWS) >= 40
    assert all(names and services for names, services, _ in ROWS), [r for r in ROWS if not (r[0] and r[1])]


@pytest.mark.parametrize(("names", "services", "cell"), ROWS, ids=[",".join(r[0]) for r in ROWS])
def test_a_row_names_settings_of_its_services_with_their_defaults(
    names: list[str], services: list[str], cell: str
) -> None:
    for service in services:
        missing = [name for name in names if name.lower() not in CLASSES[service].model_fields]
        assert not missing, f"{service} has no setting {missing}"
    for (service, name), documented in _documented_defaults(names, services, cell).items():
        code = _code_default(service, name)
        if documented is _NOT_A_VALUE:
            assert code in (None, ""), f"{service} {name}: the README describes {cell!r}, the code has {code!r}"
        elif isinstance(documented, float) and not isinstance(code, bool):
            assert code is not None and float(code) == pytest.approx(documented), (service, name, cell, code)
        else:
            assert code == documented, (service, name, cell, code)


@pytest.mark.parametrize("service", ["edge", "cloud"])
def test_every_setting_of_a_service_is_in_the_table(service: str) -> None:
    documented = {name for names, services, _ in ROWS if service in services for name in names}
    assert set(n.upper() for n in CLASSES[service].model_fields) - documented == set()


def test_every_setting_of_the_torch_free_edge_is_named_in_its_section() -> None:
    named = set(re.findall(r"`([A-Z][A-Z0-9_]*)`", EDGE_LITE))
    assert set(n.upper() for n in EdgeLiteSettings.model_fields) - named == set()
