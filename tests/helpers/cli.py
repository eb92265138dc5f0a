"""The command line as the tests call it."""

from __future__ import annotations

# flags that keep a case study from the command line to a few seconds
FAST = ["--layout", "pca", "--max-maps", "300", "--top-k", "2", "--hurt-images", "2", "--curve-steps", "2", "--clusters", "3"]


def one_error_line(capsys) -> str:
    """The single ``error: ...`` line the command printed on stderr, after checking it printed nothing else."""
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    assert "Traceback" not in captured.err
    return lines[0]
