"""HeadScope home page: pick a model and images, see the image overview (view A)."""

from __future__ import annotations

import streamlit as st

from core.images import DEFAULT_LIMITS
from core.inference import top_k
from core.model import DEMO_NAME
from core.projection import start_umap_warmup
from ui import session
from ui.charts import OVERVIEW_SELECTION, overview_chart, top5_chart
from ui.display import enlarge_for_display, plain

st.set_page_config(page_title="HeadScope", page_icon="🔭", layout="wide")


def _model_controls() -> None:
    st.sidebar.header("Model")
    spec = session.current_spec()
    choice = st.sidebar.radio(
        "Model source",
        ["Demo model (digits)", "timm model"],
        index=0 if spec.name == DEMO_NAME else 1,
        key="model_source",
    )
    if choice == "timm model":
        name = st.sidebar.text_input(
            "timm model name", value="" if spec.name == DEMO_NAME else spec.name, key="timm_name",
            placeholder="vit_base_patch16_224",
        )
        checkpoint = st.sidebar.file_uploader(
            "Checkpoint for that architecture (optional)", type=["safetensors", "pth", "pt", "bin", "ckpt"], key="checkpoint_upload"
        )
        if st.sidebar.button("Load model", key="load_model", disabled=not name.strip()):
            error = session.switch_model(name, checkpoint.getvalue() if checkpoint is not None else None)
            if error:
                st.sidebar.error(plain(error))  # it may quote the typed name or the file
    elif spec.name != DEMO_NAME:
        session.switch_model(DEMO_NAME, None)


def _image_controls() -> None:
    handle = session.current_model()
    st.sidebar.header("Images")
    if session.SOURCE_KEY not in st.session_state:  # back from another page: restore the choice
        st.session_state[session.SOURCE_KEY] = st.session_state.get(session.SOURCE_CHOICE_KEY, session.SAMPLES)
    source = st.sidebar.radio("Image set", [session.SAMPLES, session.UPLOAD, session.ZIP], key=session.SOURCE_KEY)
    st.session_state[session.SOURCE_CHOICE_KEY] = source
    if source == session.SAMPLES:
        return
    as_zip = source == session.ZIP
    uploads = st.sidebar.file_uploader(
        "ZIP with one folder per class" if as_zip else "Images (PNG, JPEG, WebP, BMP, GIF, TIFF)",
        type=["zip"] if as_zip else ["png", "jpg", "jpeg", "webp", "bmp", "gif", "tif", "tiff"],
        accept_multiple_files=not as_zip,
        max_upload_size=DEFAULT_LIMITS.max_total_bytes // 2**20 if as_zip else DEFAULT_LIMITS.max_file_bytes // 2**20,
        key="zip_upload" if as_zip else "image_upload",
        help=(
            f"At most {DEFAULT_LIMITS.max_files} images, {DEFAULT_LIMITS.max_file_bytes // 2**20} MB per image and "
            f"{DEFAULT_LIMITS.max_total_bytes // 2**20} MB in all; the server refuses any single file over "
            f"{st.get_option('server.maxUploadSize')} MB."
        ),
    )
    if as_zip:
        files = [uploads] if uploads is not None else []
    else:
        files = list(uploads or [])
    if not files:
        # the uploader comes back empty after a visit to another page: keep what was uploaded
        kept = st.session_state.get(session.UPLOADED_KEY)
        if kept is None:
            st.sidebar.info("Upload files to analyse them; until then the sample images are shown.")
        else:
            st.sidebar.info(f"Showing the {len(kept[1])} images uploaded earlier; upload files to replace them.")
            st.sidebar.button("Forget the uploaded images", key="forget_upload", on_click=session.forget_upload)
        return
    image_set, notes, error = session.upload_images([(f.name, f.getvalue()) for f in files], handle, as_zip)
    if error:
        kept = st.session_state.get(session.UPLOADED_KEY)
        st.sidebar.error(plain(error + (f" Still showing {kept[1].title}." if kept else " Showing the sample images.")))
    for note in notes:  # sentences that quote file and folder names
        st.sidebar.warning(plain(note))
    if image_set is not None:
        st.sidebar.success(f"{len(image_set)} images ready.")


def _pick_from_chart() -> None:
    selected = st.session_state["overview_chart"].selection.get(OVERVIEW_SELECTION) or []
    if selected and "id" in selected[0]:
        session.set_focus_image(selected[0]["id"])
        st.session_state["focus_id_input"] = selected[0]["id"]


def _pick_from_text() -> None:
    st.session_state["focus_request"] = st.session_state["focus_id_input"].strip()


def main() -> None:
    _model_controls()
    _image_controls()
    handle = session.current_model()
    image_set = session.active_image_set(handle)

    st.title("HeadScope")
    st.caption(
        f"**{plain(handle.name)}**: {handle.num_layers} layers × {handle.num_heads} heads, "
        f"{handle.grid[0]}×{handle.grid[1]} patches, {handle.num_prefix_tokens} prefix token(s), "
        f"{len(handle.class_names)} classes · **{plain(image_set.title)}** · device {handle.device.type}"
    )
    preds = session.predictions(handle, image_set)
    requested = st.session_state.pop("focus_request", None)
    if requested:
        try:
            image_set.by_id(requested)
            session.set_focus_image(requested)
        except KeyError:
            st.warning(f"No image in this set has the id '{plain(requested)}'; ids are shown in the chart's tooltips.")
    focus_id = session.focus_image_id(image_set)
    # a keyed text input ignores value= after its first run: keep it in step with the focus
    if st.session_state.get("focus_id_input") != focus_id:
        st.session_state["focus_id_input"] = focus_id
    points, method = session.overview_points(handle, image_set, preds)

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("Image overview")
        labels = [image.label for image in image_set.images]
        known = [i for i, label in enumerate(labels) if label is not None]
        if known:
            accuracy = float((preds.predicted[known] == [labels[i] for i in known]).mean())
            st.caption(f"Accuracy on the {len(known)} labelled images: {accuracy:.1%}.")
        st.altair_chart(
            overview_chart(points, focus_id),
            key="overview_chart",
            on_select=_pick_from_chart,
            selection_mode=OVERVIEW_SELECTION,
            width="stretch",
        )
        if method == "umap":
            layout = "UMAP of the final CLS features."
        elif session.umap_pending():
            layout = "Quick PCA layout of the final CLS features; UMAP replaces it as soon as it is ready."
            _refresh_when_umap_ready()
        else:
            layout = "PCA layout of the final CLS features (UMAP is unavailable in this process)."
        st.caption(
            f"{layout} Click a dot to make it the focus image; scroll to zoom, drag to pan. "
            "Faint small dots are uncertain predictions; dark rings mark wrong ones."
        )
    with right:
        st.subheader("Focus image")
        st.text_input("Image id", key="focus_id_input", on_change=_pick_from_text)
        image = image_set.by_id(focus_id)
        row = points.set_index("id").loc[focus_id]
        st.image(enlarge_for_display(image.image), width=220)
        label = f"label **{plain(row['label'])}**, " if row["label"] else ""
        st.markdown(f"{plain(image.name)} · {label}predicted **{plain(row['predicted'])}** ({row['probability']:.3f})")
        top = top_k(preds.probs[image_set.index_of(focus_id)], handle.class_names)
        st.altair_chart(top5_chart(top), width="stretch")
        st.dataframe(top[["rank", "class", "probability"]], hide_index=True, width="stretch")
    # UMAP compiles for ~40 s in a new process: start it once the first page is on screen
    start_umap_warmup()  # once per process; returns at once


@st.fragment(run_every=3)
def _refresh_when_umap_ready() -> None:
    if session.umap_ready():
        st.rerun(scope="app")


main()
