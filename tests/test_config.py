"""Deployment settings of .streamlit/config.toml (SPEC section 8)."""

from __future__ import annotations

import tomllib
from pathlib import Path

CONFIG = Path(__file__).resolve().parent.parent / ".streamlit" / "config.toml"


def test_streamlit_config_is_deployment_safe() -> None:
    config = tomllib.loads(CONFIG.read_text())
    server, client = config["server"], config["client"]
    assert 0 < server["maxUploadSize"] <= 1024  # MB, bounded
    assert server["enableXsrfProtection"] is True
    assert client["showErrorDetails"] in ("none", False)  # no tracebacks in the browser
    assert config["browser"]["gatherUsageStats"] is False  # demos run offline
