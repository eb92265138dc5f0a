"""AppTests of a model without a classifier (a backbone) on every view page, the start model, the model picker.

The backbone is timm's tiny ``test_vit`` built with ``num_classes=0`` (6 layers x 2 heads,
10 x 10 patches of 16 px at 160 px, a CLS token, 64 features) and random weights, saved
as a safetensors checkpoint: the app starts on it from ``HEADSCOPE_MODEL`` and
``HEADSCOPE_CHECKPOINT``, or loads it from the sidebar like any user's checkpoint.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest
import streamlit
import timm
from PIL import Image
from safetensors.torch import save
from streamlit.testing.v1 import AppTest

from core.measures.importance import BACKBONE_METRICS, BACKBONE_REASON, METRICS, MODES
from core.models.load import BUILTIN_MODELS, DINOV2_NAME
from helpers.app import assert_clean, chart_specs, page_texts
from helpers.data import APP
from helpers.images import encode
from helpers.markdown import shown
from helpers.tooltips import assert_no_reserved_key
from ui import images, importance, models, overview, patterns
from viz.overview import overview_chart

TIMEOUT = 180
PAGES = ["pages/1_Head_Importance.py", "pages/2_Attention_Strength.py", "pages/3_Attention_Patterns.py"]
BACKBONE_OPTIONS = [m.replace("_", " ") for m in BACKBONE_METRICS]


@pytest.fixture(scope="module")
def backbone_weights() -> bytes:
    model = timm.create_model("test_vit", pretrained=False, num_classes=0)
    return save({k: v.contiguous() for k, v in model.state_dict().items()})


@pytest.fixture
def backbone_file(backbone_weights: bytes, tmp_path: Path) -> Path:
    path = tmp_path / "backbone.safetensors"
    path.write_bytes(backbone_weights)
    return path


def _start(monkeypatch, **environ: str) -> AppTest:
    """The home page of a new session with these HEADSCOPE_* variables (and only these) set."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name in (models.ENV_MODEL, models.ENV_CHECKPOINT, models.ENV_IMG_SIZE):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.fixture
def backbone(monkeypatch, backbone_file: Path) -> AppTest:
    at = _start(monkeypatch, HEADSCOPE_MODEL="test_vit", HEADSCOPE_CHECKPOINT=str(backbone_file))
    assert not at.error, [e.value for e in at.error]
    return at


def _assert_tooltips_are_text(at: AppTest, where: str) -> None:
    for i, chart in enumerate(at.get("vega_lite_chart")):
        assert_no_reserved_key(f"{where} #{i}", json.loads(chart.proto.spec), chart.proto.theme == "streamlit")


def _zip_of_folders(folders: dict[str, list[tuple[int, int, int]]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for folder, colours in folders.items():
            for i, colour in enumerate(colours):
                archive.writestr(f"{folder}/{i}.png", encode(Image.new("RGB", (48, 48), colour)))
    return buffer.getvalue()


# --- home page -----------------------------------------------------------------------------


def test_home_shows_the_backbones_features_without_predictions(backbone: AppTest) -> None:
    header = shown(backbone.caption[0].value)
    assert header.startswith("**test_vit (checkpoint")
    assert "backbone: no classifier, 64-dim features" in header and "classes" not in header
    assert "10×10 patches of 160×160 px input" in header
    text = page_texts(backbone)
    assert "predicted" not in text and "Accuracy" not in text and "Top-5" not in text
    assert "pooled output features" in text
    assert not backbone.dataframe  # no top-5 table
    [(spec, data)] = chart_specs(backbone)  # the overview only: no top-5 chart
    dots = spec["layer"][0]["encoding"]
    assert "size" not in dots or "field" not in dots["size"]  # no probability to size the dots by
    assert dots["color"] == {"value": dots["color"]["value"]}  # the photos carry no labels: one colour
    assert {t["field"] for t in dots["tooltip"]} == {"id", "name"}
    points = data[spec["layer"][0]["data"]["name"]]
    assert len(points) == 9 and "probability" not in points.columns
    _assert_tooltips_are_text(backbone, "home")


def test_a_zip_of_folders_labels_and_colours_a_backbones_images(backbone: AppTest) -> None:
    data = _zip_of_folders({"cats": [(200, 30, 30), (190, 40, 40)], "dogs": [(30, 30, 200)]})
    backbone.radio(key="image_source").set_value("Upload a ZIP (ImageFolder)").run()
    backbone.file_uploader(key="zip_upload").set_value(("pets.zip", data, "application/zip"))
    backbone.run()
    assert_clean(backbone)
    image_set = backbone.session_state[images.UPLOADED_KEY][1]
    assert image_set.label_names == ("cats", "dogs")
    assert not backbone.warning  # no "folders that match no class": every folder is a label
    [(spec, datasets)] = chart_specs(backbone)
    dots = spec["layer"][0]
    assert dots["encoding"]["color"]["field"] == "class" and dots["encoding"]["color"]["title"] == "label"
    assert sorted(datasets[dots["data"]["name"]]["class"]) == ["cats", "cats", "dogs"]
    assert "label **cats**" in backbone.markdown[0].value
    backbone.switch_page(PAGES[0]).run()  # the labels index the set's own names, not classes
    assert_clean(backbone)
    assert backbone.selectbox(key="importance_metric").options == BACKBONE_OPTIONS


# --- view pages ------------------------------------------------------------------------------


def test_importance_page_offers_the_backbone_metrics_and_says_why(backbone: AppTest) -> None:
    backbone.switch_page(PAGES[0]).run()
    assert_clean(backbone)
    assert backbone.selectbox(key="importance_metric").options == BACKBONE_OPTIONS
    assert any(BACKBONE_REASON in shown(i.value) for i in backbone.info)
    assert "Top-5" not in page_texts(backbone)
    specs = chart_specs(backbone)
    assert len(specs) == 4  # line, heatmap, partial pruning, pruning curve: no top-5
    line, _ = specs[0]
    assert line["layer"][0]["mark"]["type"] == "rule"  # the unpruned model: no change, 0
    partial, partial_data = specs[2]
    right = partial["hconcat"][1]
    bars = right["layer"][0]
    assert bars["encoding"]["x"]["field"] == "output_impact"
    assert len(right["layer"]) == 1  # the bars: no unpruned probability to rule
    values = partial["hconcat"][2]  # the values, in a column of their own
    assert values["mark"]["type"] == "text" and values["encoding"]["text"]["field"] == "shown"
    modes = partial_data[values["data"]["name"]].set_index("mode")
    assert modes.loc["none", "output_impact"] == 0.0 and modes.loc["head", "output_impact"] > 0
    assert modes.loc["none", "shown"] == "0"  # a backbone's impacts, compact: 0 for the unpruned model
    assert "probability" not in modes.columns
    curve, _ = specs[3]
    assert curve["encoding"]["y"]["field"] == "similarity"
    assert list(backbone.dataframe[1].value.columns) == ["mode", "removed_attention", "output_impact"]
    _assert_tooltips_are_text(backbone, "importance")
    for scope in backbone.radio(key="importance_scope").options:
        backbone.radio(key="importance_scope").set_value(scope).run()
        for metric in BACKBONE_METRICS:
            backbone.selectbox(key="importance_metric").set_value(metric).run()
            assert_clean(backbone)
            assert backbone.dataframe[0].value["rank"].tolist() == list(range(1, 13))  # 6 x 2 heads
    for mode in MODES:
        backbone.radio(key="importance_mode").set_value(mode).run()
        assert_clean(backbone)
        assert f"B3 · After `{mode}`" in page_texts(backbone)


def test_strength_and_patterns_pages_run_on_a_backbone(monkeypatch, backbone: AppTest) -> None:
    backbone.switch_page(PAGES[1]).run()
    assert_clean(backbone)
    # C1-C3, offsets, distance, prefix share (a CLS token); top-key share, its spread, key entropy, token norms
    assert len(backbone.get("vega_lite_chart")) == 10
    assert "10×10 patch grid" in page_texts(backbone)
    monkeypatch.setattr(patterns, "umap_ready", lambda: False)
    monkeypatch.setattr(patterns, "umap_failed", lambda: True)
    backbone.session_state["pattern_max_maps"] = patterns.SAMPLE_SIZES[0]
    backbone.switch_page(PAGES[2]).run()
    assert_clean(backbone)
    assert "from 12 heads and 9 images" in page_texts(backbone)
    assert len(backbone.get("vega_lite_chart")) == 5


def test_a_class_metric_picked_on_a_classifier_gives_way_on_a_backbone(monkeypatch, backbone_weights: bytes) -> None:
    at = _start(monkeypatch)
    at.radio(key="image_source").set_value("Upload images").run()
    photos = [(f"p{i}.png", encode(Image.new("RGB", (32, 32), (40 * i, 90, 20))), "image/png") for i in range(3)]
    at.file_uploader(key="image_upload").set_value(photos)
    at.run()
    at.switch_page(PAGES[0]).run()
    assert at.selectbox(key="importance_metric").options == [m.replace("_", " ") for m in METRICS]  # output impact too
    at.selectbox(key="importance_metric").set_value("taylor").run()
    assert_clean(at)
    at.switch_page("streamlit_app.py").run()
    at.radio(key="model_source").set_value("timm model").run()
    at.text_input(key="timm_name").set_value("test_vit").run()
    at.file_uploader(key="checkpoint_upload").set_value(("backbone.safetensors", backbone_weights, "application/octet-stream"))
    at.run()
    at.button(key="load_model").click().run()
    assert_clean(at)
    assert "backbone: no classifier" in at.caption[0].value
    at.switch_page(PAGES[0]).run()
    assert_clean(at)
    assert at.selectbox(key="importance_metric").value in BACKBONE_METRICS


# --- start model and model picker ---------------------------------------------------------


def test_the_start_model_comes_from_the_environment(monkeypatch) -> None:
    at = _start(monkeypatch, HEADSCOPE_MODEL="demo")
    assert_clean(at)
    assert at.caption[0].value.startswith("**demo**")
    assert at.radio(key="model_source").value == "demo"


@pytest.mark.parametrize(
    "environ, reason",
    [
        ({"HEADSCOPE_MODEL": "no_such_vit"}, "timm has no model called 'no_such_vit'"),
        ({"HEADSCOPE_MODEL": "test_vit", "HEADSCOPE_CHECKPOINT": "/no/such/file.safetensors"}, "cannot be read"),
        ({"HEADSCOPE_CHECKPOINT": "/some/file.safetensors"}, "HEADSCOPE_MODEL does not name"),
        ({"HEADSCOPE_MODEL": "test_vit", "HEADSCOPE_IMG_SIZE": "big"}, "must be a whole number of pixels, not 'big'"),
    ],
)
def test_a_start_model_that_fails_says_why_once_and_starts_on_the_demo(monkeypatch, environ: dict, reason: str) -> None:
    at = _start(monkeypatch, **environ)
    assert len(at.error) == 1
    message = shown(at.error[0].value)
    assert reason in message and message.endswith("Starting on the demo model instead.")
    assert at.caption[0].value.startswith("**demo**")
    at.run()  # said once: the session goes on with the demo model
    assert_clean(at)
    assert at.caption[0].value.startswith("**demo**")


def test_the_picker_lists_the_builtin_models_next_to_timm(monkeypatch) -> None:
    at = _start(monkeypatch)
    picker = at.radio(key="model_source")
    assert picker.options == [*BUILTIN_MODELS, "timm model", "transformers model"]
    assert picker.value == "demo" and not at.sidebar.get("number_input")  # the demo model has one size
    picker.set_value(DINOV2_NAME).run()
    assert_clean(at)
    assert at.number_input(key="img_size").value is None  # the model's default size
    assert at.button(key="load_model")  # a minute's preparation the first time: only on request
    assert at.caption[0].value.startswith("**demo**")


def test_an_input_size_off_the_patch_grid_keeps_the_previous_model(monkeypatch, backbone_weights: bytes) -> None:
    at = _start(monkeypatch)
    at.radio(key="model_source").set_value("timm model").run()
    at.text_input(key="timm_name").set_value("test_vit").run()
    at.file_uploader(key="checkpoint_upload").set_value(("backbone.safetensors", backbone_weights, "application/octet-stream"))
    at.run()
    at.number_input(key="img_size").set_value(100).run()
    at.button(key="load_model").click().run()
    assert not at.exception, at.exception
    assert "multiple of the model's 16 px patches" in shown(at.sidebar.error[0].value)
    assert at.caption[0].value.startswith("**demo**")
    at.number_input(key="img_size").set_value(64).run()
    at.button(key="load_model").click().run()
    assert_clean(at)
    header = shown(at.caption[0].value)
    assert header.startswith("**test_vit (checkpoint") and "64 px" in header
    assert "4×4 patches of 64×64 px input" in header
    assert at.session_state[models.MODEL_KEY].img_size == 64


def test_loading_shows_the_preparation_as_a_progress_bar(monkeypatch) -> None:
    from core.models.handle import wrap_model
    from helpers.models import tiny_vit

    def prepare(name: str, *, checkpoint=None, img_size=None, progress=None, local_paths=False):
        assert name == DINOV2_NAME and progress is not None and not local_paths  # a visitor never names a path
        progress("downloading the weights", 0.25)
        progress("converting them", 0.75)
        return wrap_model(tiny_vit(num_classes=0), device="cpu")

    texts: list[str] = []
    real_progress = streamlit.progress

    def watched_progress(value, text=None, **kwargs):
        texts.append(text)
        return real_progress(value, text=text, **kwargs)

    at = _start(monkeypatch)
    monkeypatch.setattr(models, "load_model", prepare)
    monkeypatch.setattr(streamlit, "progress", watched_progress)
    try:
        at.radio(key="model_source").set_value(DINOV2_NAME).run()
        at.button(key="load_model").click().run()
        assert_clean(at)
    finally:
        models._cached_model.clear()  # the stand-in must not serve later loads of dinov2-s
    assert [text for text in texts if text and text.startswith("Preparing")] == [
        f"Preparing {DINOV2_NAME}: downloading the weights…"  # the bar's first stage; it moves on from there
    ]
    assert "backbone: no classifier, 24-dim features" in at.caption[0].value
    assert at.session_state[models.MODEL_KEY].name == DINOV2_NAME


# --- pure pieces ---------------------------------------------------------------------------


def _backbone_points(labels: list[str]) -> pd.DataFrame:
    return pd.DataFrame(
        {"x": [0.0, 1.0], "y": [1.0, 0.0], "id": ["a", "b"], "name": ["a.png", "b.png"], "label": labels,
         "class": [label or overview.NO_LABEL for label in labels]}
    )


def test_the_backbone_overview_colours_by_label_only_when_there_are_labels() -> None:
    plain_dots = overview_chart(_backbone_points(["", ""]), "a").to_dict()["layer"][0]["encoding"]
    assert "field" not in plain_dots["color"] and "field" not in plain_dots["size"]
    labelled = overview_chart(_backbone_points(["cats", ""]), "a").to_dict()["layer"][0]["encoding"]
    assert labelled["color"]["field"] == "class"
    assert {t["field"] for t in labelled["tooltip"]} == {"id", "name", "label"}


def test_baseline_of_an_impact_is_zero_and_of_a_gradient_none() -> None:
    from core.measures.importance import HeadImportance

    unpruned = pd.DataFrame({"image": [0], "target": [-1], "probability": [float("nan")], "correct": [False]})
    tables = HeadImportance(overall=pd.DataFrame(), per_image=pd.DataFrame(), unpruned=unpruned)
    assert importance.baseline_value(tables, "output_impact", None) == 0.0
    assert importance.baseline_value(tables, "layer_impact", 0) == 0.0
    assert importance.baseline_value(tables, "taylor", None) is None


def test_the_explanations_page_offers_a_backbone_what_needs_no_class(backbone: AppTest) -> None:
    backbone.switch_page("pages/5_Explanations.py").run()
    assert_clean(backbone)
    text = page_texts(backbone)
    assert "gradient rollout needs a class to explain" in text
    assert len(backbone.main.get("image")) == 2  # attention rollout and the last layer's attention
    assert "explain_heads_chart" not in {chart.key for chart in backbone.get("vega_lite_chart")}
    backbone.button(key="explain_score").click().run()
    assert_clean(backbone)
    summary = backbone.dataframe[0].value
    assert set(summary["method"]) == {"attention rollout", "last-layer attention"}
    assert "cosine to the unmodified output" in json.dumps([json.loads(c.proto.spec) for c in backbone.get("vega_lite_chart")])
