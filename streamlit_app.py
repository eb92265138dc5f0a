"""HeadScope home page: pick a model and images, see the image overview (view A)."""

from __future__ import annotations

import streamlit as st
from streamlit.runtime.uploaded_file_manager import UploadedFile

from core.inputs.images import DEFAULT_LIMITS, ImageSet
from core.measures import projection
from core.measures.inference import Predictions, top_k
from core.models.handle import DEFAULT_IMG_SIZE, ViTHandle
from core.models.load import BUILTIN_MODELS, DEMO_NAME
from core.models.transformers import is_transformers_source
from ui import (
    export,
    images,
    links,
    models,
    navigation,
    overview,
    probe,
    results,
    selection,
)
from ui.display import enlarge_for_display, plain
from ui.models import MAX_IMG_SIZE, ModelSpec
from viz.overview import OVERVIEW_SELECTION, overview_chart, top5_chart

st.set_page_config(page_title="HeadScope", page_icon="🔭", layout="wide")

TIMM_CHOICE = "timm model"
_TIMM_CAPTION = "any timm ViT by name, with its pretrained weights or your checkpoint"
TRANSFORMERS_CHOICE = "transformers model"
_TRANSFORMERS_CAPTION = "a Hugging Face ViT, DeiT or DINOv2: a hub repo id, or a ZIP of its save_pretrained folder"


def _model_controls() -> None:
    st.sidebar.header("Model")
    spec = models.current_spec()
    transformers_spec = spec.transformers_zip or is_transformers_source(spec.name, local_paths=spec.server_paths)
    choice = _model_source(spec, transformers_spec)
    if choice == DEMO_NAME:  # instant and at one size only: picking it is loading it
        if spec.name != DEMO_NAME:
            models.switch_model(DEMO_NAME, None)
        return
    name, upload, is_archive = choice, None, False
    if choice == TIMM_CHOICE:
        name, upload = _timm_inputs(spec, transformers_spec)
    elif choice == TRANSFORMERS_CHOICE:
        name, upload = _transformers_inputs(spec, transformers_spec)
        is_archive = upload is not None
    img_size = _img_size_input(spec)
    if choice in BUILTIN_MODELS:
        st.sidebar.caption("The first load prepares the weights once (about a minute); later loads take seconds.")
    if st.sidebar.button("Load model", key="load_model", disabled=not name.strip()):
        error = models.switch_model(
            name, upload.getvalue() if upload is not None else None, img_size, transformers_zip=is_archive,
        )
        if error:
            st.sidebar.error(plain(error))  # it may quote the typed name or the file
    probe.probe_sidebar(models.current_model())


def _model_source(spec: ModelSpec, transformers_spec: bool) -> str:
    """The sidebar's choice of model: a built-in one, a timm model or a transformers model."""
    choices = [*BUILTIN_MODELS, TIMM_CHOICE, TRANSFORMERS_CHOICE]
    current = spec.name if spec.name in BUILTIN_MODELS else TRANSFORMERS_CHOICE if transformers_spec else TIMM_CHOICE
    return st.sidebar.radio(
        "Model source",
        choices,
        index=choices.index(current),
        captions=[*BUILTIN_MODELS.values(), _TIMM_CAPTION, _TRANSFORMERS_CAPTION],
        key="model_source",
    )


def _timm_inputs(spec: ModelSpec, transformers_spec: bool) -> tuple[str, UploadedFile | None]:
    """A timm model's name and its optional checkpoint upload."""
    name = st.sidebar.text_input(
        "timm model name", value="" if spec.name in BUILTIN_MODELS or transformers_spec else spec.name,
        key="timm_name", placeholder="vit_base_patch16_224",
    )
    checkpoint = st.sidebar.file_uploader(
        "Checkpoint for that architecture (optional)", type=["safetensors", "pth", "pt", "bin", "ckpt"], key="checkpoint_upload"
    )
    return name, checkpoint


def _transformers_inputs(spec: ModelSpec, transformers_spec: bool) -> tuple[str, UploadedFile | None]:
    """A transformers model: its hub repo id, or an uploaded ZIP of its folder (named after the file), which wins."""
    name = st.sidebar.text_input(
        "Hub repo id", value=spec.name if transformers_spec and not spec.transformers_zip else "",
        key="hf_repo", placeholder="facebook/dinov2-small",
        help="Read from this machine's Hugging Face cache first; from the hub when it can be reached.",
    )
    archive = st.sidebar.file_uploader(
        "…or a ZIP of a save_pretrained folder", type=["zip"], key="hf_zip_upload",
        help=(
            "config.json with model.safetensors or pytorch_model.bin (and preprocessor_config.json if any). "
            "While a ZIP is here, Load model loads it instead of the repo id."
        ),
    )
    if archive is not None:
        name = archive.name.removesuffix(".zip").removesuffix(".ZIP") or "uploaded model"
    return name, archive


def _img_size_input(spec: ModelSpec) -> int | None:
    """The input side the user asks for, in pixels; ``None``: the model's default."""
    img_size = st.sidebar.number_input(
        "Input size in pixels (optional)",
        min_value=1,
        max_value=MAX_IMG_SIZE,
        value=spec.img_size,
        step=1,
        placeholder="the model's default",
        key="img_size",
        help=(
            "A multiple of the model's patch size; the position embeddings are resampled to the new patch grid. "
            f"Empty: the size the model was built for, or {DEFAULT_IMG_SIZE} px for a model built for a large grid "
            "(DINOv2 at 518 px), whose attention at full size takes hundreds of MB per image."
        ),
    )
    return int(img_size) if img_size else None


def _image_controls() -> None:
    handle = models.current_model()
    st.sidebar.header("Images")
    if images.SOURCE_KEY not in st.session_state:  # back from another page: restore the choice
        st.session_state[images.SOURCE_KEY] = st.session_state.get(images.SOURCE_CHOICE_KEY, images.SAMPLES)
    source = st.sidebar.radio("Image set", [images.SAMPLES, images.UPLOAD, images.ZIP], key=images.SOURCE_KEY)
    st.session_state[images.SOURCE_CHOICE_KEY] = source
    if source == images.SAMPLES:
        return
    as_zip = source == images.ZIP
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
        kept = st.session_state.get(images.UPLOADED_KEY)
        if kept is None:
            st.sidebar.info("Upload files to analyse them; until then the sample images are shown.")
        else:
            st.sidebar.info(f"Showing the {len(kept[1])} images uploaded earlier; upload files to replace them.")
            st.sidebar.button("Forget the uploaded images", key="forget_upload", on_click=images.forget_upload)
        return
    image_set, notes, error = images.upload_images([(f.name, f.getvalue()) for f in files], handle, as_zip)
    if error:
        kept = st.session_state.get(images.UPLOADED_KEY)
        st.sidebar.error(plain(error + (f" Still showing {kept[1].title}." if kept else " Showing the sample images.")))
    for note in notes:  # sentences that quote file and folder names
        st.sidebar.warning(plain(note))
    if image_set is not None:
        st.sidebar.success(f"{len(image_set)} images ready.")


def _pick_from_chart() -> None:
    selected = st.session_state["overview_chart"].selection.get(OVERVIEW_SELECTION) or []
    if selected and "id" in selected[0]:
        selection.set_focus_image(selected[0]["id"])
        st.session_state["focus_id_input"] = selected[0]["id"]


def _pick_from_text() -> None:
    st.session_state["focus_request"] = st.session_state["focus_id_input"].strip()


def _model_summary(handle: ViTHandle, preds: Predictions) -> str:
    height, width = handle.img_size
    outputs = (
        f"backbone: no classifier, {preds.features.shape[1]}-dim features"
        if handle.is_backbone
        else f"{len(handle.class_names)} classes"
    )
    return (
        f"**{plain(handle.name)}**: {handle.num_layers} layers × {handle.num_heads} heads, "
        f"{handle.grid[0]}×{handle.grid[1]} patches of {height}×{width} px input, "
        f"{handle.num_prefix_tokens} prefix token(s), {outputs}"
    )


def _focus_panel(handle: ViTHandle, image_set: ImageSet, preds: Predictions, points, focus_id: str) -> None:
    st.subheader("Focus image")
    st.text_input("Image id", key="focus_id_input", on_change=_pick_from_text)
    image = image_set.by_id(focus_id)
    row = points.set_index("id").loc[focus_id]
    st.image(enlarge_for_display(image.image), width=220)
    label = f"label **{plain(row['label'])}**" if row["label"] else ""
    if handle.is_backbone:
        st.markdown(f"{plain(image.name)}" + (f" · {label}" if label else ""))
        st.caption(
            f"A backbone has no classifier, so there is nothing to predict: it turns each image into "
            f"{preds.features.shape[1]} features, and the overview places images with similar features together."
        )
        return
    st.markdown(f"{plain(image.name)} · {label + ', ' if label else ''}predicted **{plain(row['predicted'])}** ({row['probability']:.3f})")
    top = top_k(preds.probs[image_set.index_of(focus_id)], handle.class_names)
    export.chart(top5_chart(top), "A top-5", width="stretch")
    export.table(top[["rank", "class", "probability"]], "A top-5 table", hide_index=True, width="stretch")


def _layout_caption(handle: ViTHandle, points, method: str) -> str:
    if handle.probe is not None:
        features = "features the linear probe reads"
    else:
        features = "pooled output features" if handle.is_backbone else "final CLS features"
    if method == "umap":
        layout = f"UMAP of the {features}."
    elif overview.umap_pending():
        layout = f"Quick PCA layout of the {features}; UMAP replaces it as soon as it is ready."
        _refresh_when_umap_ready()
    else:
        layout = f"PCA layout of the {features} (UMAP is unavailable in this process)."
    if not handle.is_backbone:
        marks = "Faint small dots are uncertain predictions; dark rings mark wrong ones."
    elif (points["label"] != "").any():
        marks = "Colours are the images' labels (the folders of an ImageFolder ZIP)."
    else:
        marks = "Upload a ZIP with one folder per group of images to colour them by folder."
    return f"{layout} Click a dot to make it the focus image; scroll to zoom, drag to pan. {marks}"


def main() -> None:
    navigation.sidebar_links()
    links.restore("overview")  # a link opened in a new session: its model, focus image and head
    link_place = st.sidebar.container()  # above the long model and image pickers
    _model_controls()
    _image_controls()
    handle = models.current_model()
    image_set = images.active_image_set(handle)
    links.share("overview", handle, image_set, link_place)

    st.title("HeadScope")
    preds = results.preview(handle, image_set, heavy=False).predictions  # the set's first pass, which every view reads
    st.caption(f"{_model_summary(handle, preds)} · **{plain(image_set.title)}** · device {handle.device.type}")
    probe.probe_header(handle)
    probe.probe_panel(handle, image_set)
    requested = st.session_state.pop("focus_request", None)
    if requested and not selection.focus_image_if_in(image_set, requested):
        st.warning(f"No image in this set has the id '{plain(requested)}'; ids are shown in the chart's tooltips.")
    focus_id = selection.focus_image_id(image_set)
    # a keyed text input ignores value= after its first run: keep it in step with the focus
    if st.session_state.get("focus_id_input") != focus_id:
        st.session_state["focus_id_input"] = focus_id
    points, method = overview.overview_points(handle, image_set, preds)

    left, right = st.columns([3, 2], gap="large")
    with left:
        st.subheader("Image overview")
        labels = [image.label for image in image_set.images]
        known = [i for i, label in enumerate(labels) if label is not None]
        if known and not handle.is_backbone:
            accuracy = float((preds.predicted[known] == [labels[i] for i in known]).mean())
            st.caption(f"Accuracy on the {len(known)} labelled images: {accuracy:.1%}.")
        export.chart(
            overview_chart(points, focus_id),
            "A image overview",
            key="overview_chart",
            on_select=_pick_from_chart,
            selection_mode=OVERVIEW_SELECTION,
            width="stretch",
        )
        st.caption(_layout_caption(handle, points, method))
    with right:
        _focus_panel(handle, image_set, preds, points, focus_id)
    # UMAP compiles for ~40 s in a new process: start it once the first page is on screen
    projection.start_umap_warmup()  # once per process; returns at once


@st.fragment(run_every=3)
def _refresh_when_umap_ready() -> None:
    if projection.umap_ready():
        st.rerun(scope="app")


main()
