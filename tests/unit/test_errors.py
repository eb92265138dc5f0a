"""Every error a user can cause is a ``HeadScopeError`` with one sentence; a bug is never shown as one.

The app (pages, ``ui``, ``streamlit_app.py``) and the command line catch only
``HeadScopeError`` (and narrow library errors such as ``OSError``), so a ``ValueError``
raised by a bug reaches Streamlit's exception box or the CLI's traceback.
"""

from __future__ import annotations

import ast

import pandas as pd
import pytest
import torch

import core.__main__ as cli
from core import errors
from core.errors import (
    HeadScopeError,
    InvalidSetting,
    LabelsMismatch,
    NotEnoughImages,
    UnsupportedMapKind,
    UnsupportedMetric,
)
from core.inputs.images import ImageSet
from core.measures.importance import (
    head_importance,
    head_importance_tables,
    partial_pruning,
    pruning_curve,
)
from core.measures.patterns import sample_maps, sample_maps_from
from core.measures.strength import strength_statistics
from core.models.handle import wrap_model
from core.models.load import load_model
from core.study.casestudy import analyze
from helpers.data import ROOT
from helpers.models import tiny_vit

APP_CODE = [*sorted((ROOT / "pages").glob("*.py")), *sorted((ROOT / "ui").glob("*.py")), ROOT / "streamlit_app.py", ROOT / "core" / "__main__.py"]
TOO_BROAD = {"ValueError", "Exception", "BaseException"}
NEW_CLASSES = (InvalidSetting, NotEnoughImages, UnsupportedMapKind, LabelsMismatch)


def _caught_names(handler: ast.ExceptHandler) -> list[str]:
    kinds = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return [kind.id if isinstance(kind, ast.Name) else ast.unparse(kind) for kind in kinds]


@pytest.mark.parametrize("path", APP_CODE, ids=lambda path: str(path.relative_to(ROOT)))
def test_app_and_cli_never_catch_broadly(path) -> None:
    """No ``except:``, ``except Exception``, ``except BaseException`` or ``except ValueError`` in app or CLI code."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    broad = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler):
            names = _caught_names(node) if node.type is not None else ["<bare>"]
            if node.type is None or TOO_BROAD & set(names):
                broad.append(f"line {node.lineno}: except {', '.join(names)}")
    assert not broad, broad


def test_app_code_list_covers_pages_ui_and_cli() -> None:
    names = {path.name for path in APP_CODE}
    assert {"streamlit_app.py", "__main__.py", "results.py", "4_Case_Study.py"} <= names


@pytest.mark.parametrize("cls", NEW_CLASSES, ids=lambda cls: cls.__name__)
def test_new_errors_are_headscope_errors_and_value_errors(cls) -> None:
    """Library callers that catch ``ValueError`` keep working; each class says when it is raised."""
    assert issubclass(cls, HeadScopeError) and issubclass(cls, ValueError)
    assert cls.__doc__ and cls.__doc__.strip().endswith(".")
    assert cls.__name__ in errors.__all__


# --- user mistakes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def no_cls_handle():
    return wrap_model(tiny_vit(class_token=False, global_pool="avg"), device="cpu")


def _mistakes(demo_handle, small_set, no_cls_handle) -> dict[str, tuple[type[HeadScopeError], object]]:
    one = small_set.pil_images()[:1]
    x = demo_handle.preprocess(one)
    overall = pd.DataFrame({"layer": [0], "head": [0], "metric": ["probability"], "value": [0.0]})
    attention = torch.rand(1, 1, 1, 5, 5)
    return {
        "importance of no images": (NotEnoughImages, lambda: head_importance_tables(demo_handle, [])),
        "strength of no images": (NotEnoughImages, lambda: strength_statistics(demo_handle, [])),
        "patterns of no images": (NotEnoughImages, lambda: sample_maps(demo_handle, [])),
        "case study of no images": (NotEnoughImages, lambda: analyze(demo_handle, ImageSet.from_images("none", []))),
        "layer out of range": (InvalidSetting, lambda: partial_pruning(demo_handle, x, layer=99, head=0)),
        "head out of range": (InvalidSetting, lambda: partial_pruning(demo_handle, x, layer=0, head=99)),
        "target out of range": (InvalidSetting, lambda: partial_pruning(demo_handle, x, layer=0, head=0, target=999)),
        "CLS maps without a CLS token": (
            UnsupportedMapKind, lambda: sample_maps(no_cls_handle, torch.randn(1, 3, 32, 32), kind="cls"),
        ),
        "unknown map kind": (
            UnsupportedMapKind,
            lambda: sample_maps_from([attention], num_images=1, grid=(2, 2), num_prefix_tokens=1, kind="rows"),
        ),
        "sample cap below the heads": (InvalidSetting, lambda: sample_maps(demo_handle, one, max_maps=1)),
        "curve of zero steps": (InvalidSetting, lambda: pruning_curve(demo_handle, one, overall, steps=0)),
        "batch size zero": (InvalidSetting, lambda: head_importance(demo_handle, one, batch_size=0)),
        "input size for the demo model": (InvalidSetting, lambda: load_model("demo", img_size=64)),
        "unknown metric": (UnsupportedMetric, lambda: head_importance(demo_handle, one, metrics=["nonsense"])),
        "labels for other images": (LabelsMismatch, lambda: head_importance(demo_handle, one, torch.tensor([0, 1]))),
        "label past the classes": (LabelsMismatch, lambda: head_importance(demo_handle, one, torch.tensor([99]))),
        "class names that do not fit": (
            LabelsMismatch, lambda: wrap_model(tiny_vit(num_classes=0), class_names=["a"], device="cpu"),
        ),
    }


MISTAKES = [
    "importance of no images", "strength of no images", "patterns of no images", "case study of no images",
    "layer out of range", "head out of range", "target out of range", "CLS maps without a CLS token",
    "unknown map kind", "sample cap below the heads", "curve of zero steps", "batch size zero",
    "input size for the demo model", "unknown metric", "labels for other images", "label past the classes",
    "class names that do not fit",
]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_a_user_mistake_is_a_headscope_error_with_one_sentence(mistake, demo_handle, small_set, no_cls_handle) -> None:
    expected, call = _mistakes(demo_handle, small_set, no_cls_handle)[mistake]
    with pytest.raises(expected) as caught:
        call()
    assert isinstance(caught.value, HeadScopeError) and isinstance(caught.value, ValueError)
    message = str(caught.value)
    assert message.endswith("."), message
    assert "\n" not in message and "Traceback" not in message, message


def test_mistake_list_matches_the_cases(demo_handle, small_set, no_cls_handle) -> None:
    assert sorted(_mistakes(demo_handle, small_set, no_cls_handle)) == sorted(MISTAKES)


# --- the command line ------------------------------------------------------------------------


def _args(tmp_path) -> list[str]:
    (tmp_path / "images").mkdir(exist_ok=True)
    return ["analyze", "--images", str(tmp_path / "images"), "--out", str(tmp_path / "x.zip")]


def test_cli_lets_a_bug_propagate(tmp_path, monkeypatch, capsys) -> None:
    """A plain ValueError from inside core is a bug: a traceback, not exit code 2 with a sentence."""

    def broken(*_args, **_kwargs):
        raise ValueError("an internal invariant broke")

    monkeypatch.setattr("core.models.load.load_model", broken)  # the CLI imports it when the command runs
    with pytest.raises(ValueError, match="an internal invariant broke"):
        cli.main(_args(tmp_path))
    assert "error:" not in capsys.readouterr().err


def test_cli_turns_a_headscope_error_into_one_line_and_exit_2(tmp_path, monkeypatch, capsys) -> None:
    def refuse(*_args, **_kwargs):
        raise InvalidSetting("The input size must be a positive multiple of the model's 16 px patches.")

    monkeypatch.setattr("core.models.load.load_model", refuse)
    assert cli.main(_args(tmp_path)) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == "error: The input size must be a positive multiple of the model's 16 px patches.\n"


def test_cli_flag_out_of_range_is_an_invalid_setting(tmp_path, capsys) -> None:
    assert cli.main([*_args(tmp_path), "--curve-steps", "0"]) == cli.EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err == "error: --curve-steps must be at least 1, not 0.\n"
    with pytest.raises(InvalidSetting):
        cli.analyze_command(cli._parser().parse_args([*_args(tmp_path), "--out", str(tmp_path)]))
