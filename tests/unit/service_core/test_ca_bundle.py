"""An edge's CA_BUNDLE that does not load is refused with the settings, naming the file (the torch edge said
only "No such file or directory" once its lifespan started)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from edge_lite.settings import EdgeLiteSettings
from edge_service.settings import EdgeSettings


@pytest.mark.parametrize("settings", [EdgeSettings, EdgeLiteSettings], ids=["edge", "edge_lite"])
def test_a_ca_bundle_that_does_not_load_is_named(settings: type[BaseModel], tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    extra = {"onnx_dir": tmp_path} if settings is EdgeLiteSettings else {}
    for bundle in (tmp_path / "missing.pem", junk):
        with pytest.raises(ValidationError, match=f"cannot load the CA bundle '{bundle}'"):
            settings(ca_bundle=str(bundle), **extra)
