"""The command line as the tests call it."""

from __future__ import annotations

# flags that keep a case study from the command line to a few seconds
FAST = ["--layout", "pca", "--max-maps", "300", "--top-k", "2", "--hurt-images", "2", "--curve-steps", "2", "--clusters", "3"]
