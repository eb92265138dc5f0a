"""AppTest of the explanations page: relevance maps of the focus image, the heads behind them, their faithfulness."""

from __future__ import annotations

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from core.measures.attribution import METHODS
from helpers.app import assert_clean, captions, started_app

TIMEOUT = 180
PAGE = "pages/5_Explanations.py"


@pytest.fixture
def page(monkeypatch) -> AppTest:
    at = started_app(monkeypatch, TIMEOUT)
    at.switch_page(PAGE).run()
    assert_clean(at)
    return at


def test_the_focus_image_is_explained_by_every_method(page: AppTest) -> None:
    assert page.title[0].value == "Explanations"
    assert len(page.main.get("image")) == len(METHODS)  # one map per method
    text = captions(page)
    # the gradient rollout explains the image's label (the first sample is a 1)
    assert "Attention rollout · mean of the heads" in text and "Gradient rollout for class **1**" in text
    assert "Last layer's attention (L5, mean of the heads)" in text
    assert "explain_heads_chart" in {chart.key for chart in page.get("vega_lite_chart")}
    table = page.dataframe[0].value
    assert list(table.columns) == ["head", "share", "rank"] and len(table) == 5
    assert table["share"].is_monotonic_decreasing and 0 < table["share"].sum() <= 1
    assert table["rank"].between(1, 36).all()
    assert "Press **Score the maps**" in text  # the curves wait for the button


def test_scoring_shows_each_method_against_a_random_order(page: AppTest) -> None:
    page.button(key="explain_score").click().run()
    assert not page.exception and not page.error
    charts = [c for c in page.get("vega_lite_chart") if c.key != "explain_heads_chart"]
    assert len(charts) == 1
    summary = page.dataframe[1].value
    assert sorted(set(summary["method"])) == sorted(METHODS) and set(summary["curve"]) == {"deletion", "insertion"}
    assert (summary["images"] == 1).all()
    # the table's numbers are the chart's curves' areas: the map's deletion area lies between the scores' extremes
    assert summary["relevance"].between(0, 1).all() and summary["random"].between(0, 1).all()
    # another fill is another request: the old curves are not shown for it
    page.radio(key="explain_fill").set_value("blur").run()
    assert "Press **Score the maps**" in captions(page) and len(page.dataframe) == 1


def test_the_top_head_button_makes_it_the_focus_head(page: AppTest) -> None:
    top = page.dataframe[0].value["head"].iloc[0]
    page.button(key="explain_focus_top").click().run()
    assert not page.exception
    layer, head = (int(part) for part in top[1:].split("H"))
    assert (page.session_state["focus_layer"], page.session_state["focus_head"]) == (layer, head)


def _pictures(at: AppTest) -> list[str]:
    """Every map picture's media URL: Streamlit names a media file by a hash of its bytes."""
    return [element.proto.imgs[0].url for element in at.main.get("image")]


def test_another_fusion_gives_another_rollout(page: AppTest) -> None:
    before = _pictures(page)
    page.radio(key="explain_fusion").set_value("max").run()
    assert not page.exception
    assert "Attention rollout · max of the heads" in captions(page)
    after = _pictures(page)
    assert after[0] != before[0] and after[1:] == before[1:]  # only the attention rollout depends on the fusion


def test_a_model_that_fails_on_the_image_gets_a_sentence(page: AppTest, monkeypatch) -> None:
    from core.errors import NonFiniteOutputs
    from ui import attribution

    def fail(*_args, **_kwargs):
        raise NonFiniteOutputs("The model outputs NaN or infinite values for these images.")

    monkeypatch.setattr(attribution, "relevance_maps", fail)
    page.select_slider(key="explain_discard").set_value(0.95).run()  # settings no cached map has
    assert not page.exception
    assert [e.value for e in page.error] == ["The model outputs NaN or infinite values for these images."]


def test_the_image_maps_follow_the_settings(tiny_handle) -> None:
    import io

    from PIL import Image

    from core.inputs.images import image_set_from_files
    from ui import attribution

    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buffer, format="PNG")
    images, _ = image_set_from_files([("a.png", buffer.getvalue())])
    image_id = images.images[0].id
    mean = attribution.image_maps(tiny_handle, images, image_id, "mean", 0.0)
    low = attribution.image_maps(tiny_handle, images, image_id, "min", 0.0)
    assert set(mean.maps) == set(METHODS) and mean.maps["attention rollout"].shape == tiny_handle.grid
    assert not np.allclose(mean.maps["attention rollout"], low.maps["attention rollout"])
    np.testing.assert_allclose(mean.maps["gradient rollout"], low.maps["gradient rollout"])  # no fusion in it
    assert mean.heads.shape == (3, 3) and np.isclose(mean.heads.sum(), 1.0, atol=1e-5)
    thinned = attribution.image_maps(tiny_handle, images, image_id, "mean", 0.9)
    assert not np.allclose(mean.maps["attention rollout"], thinned.maps["attention rollout"])
    assert mean.target == mean.predicted and mean.predicted in range(5)  # no label: the top-1 is explained
    top = attribution.image_maps(tiny_handle, images, image_id, "mean", 0.0)
    assert top.maps["gradient rollout"].tobytes() == mean.maps["gradient rollout"].tobytes()


def test_one_outlier_patch_does_not_leave_the_rest_dark(tiny_handle) -> None:
    from PIL import Image

    from ui import attribution

    relevance = np.linspace(0.0, 1.0, 16).reshape(4, 4)
    relevance[3, 3] = 1000.0  # a sink patch, as DINOv2-S's rollout has
    picture = np.asarray(attribution.map_picture(tiny_handle, Image.new("RGB", (32, 32), (0, 0, 0)), relevance))
    cell = picture.shape[0] // 4
    at = lambda r, c: picture[r * cell + cell // 2, c * cell + cell // 2].astype(int)  # noqa: E731
    # on a black image the tint is the only colour: the second-brightest patch is nearly as bright as the outlier
    assert at(3, 2).sum() > 0.8 * at(3, 3).sum() and at(0, 0).sum() == 0
    assert at(1, 0).sum() < at(2, 0).sum() < at(3, 0).sum()
