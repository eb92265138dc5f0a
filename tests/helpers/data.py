"""Where the repository and the stored test data are, and how closely stored figures must agree."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "streamlit_app.py")
DATA = ROOT / "tests" / "data"

# float32 kernels differ between CPUs (their vector widths block the sums differently): the
# same computation agrees to about 1e-7 across machines, and a changed one moves far more
ACROSS_CPUS = dict(rtol=1e-4, atol=1e-6)

# a bundle saved before output_impact existed, with the metrics it holds
V1_BUNDLE = DATA / "bundle_v1_demo.zip"
V1_METRICS = ("probability", "accuracy", "layer_impact", "taylor")

# every view page, as ``AppTest.switch_page`` takes it
VIEW_PAGES = [f"pages/{p.name}" for p in sorted((ROOT / "pages").glob("[0-9]*_*.py"))]
