"""Deployment settings of .streamlit/config.toml: bounded uploads, XSRF protection, no
tracebacks in the browser, no usage statistics."""

from __future__ import annotations

import tomllib

from helpers.data import ROOT

CONFIG = ROOT / ".streamlit" / "config.toml"


def test_streamlit_config_is_deployment_safe() -> None:
    config = tomllib.loads(CONFIG.read_text())
    server, client = config["server"], config["client"]
    assert 0 < server["maxUploadSize"] <= 1024  # MB, bounded
    assert server["enableXsrfProtection"] is True
    assert client["showErrorDetails"] in ("none", False)  # no tracebacks in the browser
    assert config["browser"]["gatherUsageStats"] is False  # demos run offline
