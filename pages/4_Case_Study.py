"""Case study: why the most important heads matter, as findings with their numbers; export and reopen."""

from __future__ import annotations

import streamlit as st

from core.measures.importance import BACKBONE_REASON, METRIC_HELP, metrics_for
from core.measures.projection import start_umap_warmup
from core.study.bundle import save_bundle
from core.study.casestudy import findings
from ui import casestudy, export, library, models, navigation, sidebar
from ui.display import plain, sentence_on_error
from viz.report import case_charts, mode_chart_key, render_report

st.set_page_config(page_title="Case study · HeadScope", page_icon="🔭", layout="wide")
ctx = sidebar.page_context("case")
start_umap_warmup()  # once per process: a no-op when the home page started it
handle = ctx.handle

st.title("Case study")
st.caption(
    "The most important heads, and why: which part of their attention the prediction needs (partial pruning on "
    "the images where pruning hurts most), how local they are (hop profile, entropy, distance), whether they are "
    "sinks that send the patches' attention to one token, and which learned pattern they share. Each finding links "
    "to the view it comes from."
)

with st.expander("Open a result bundle", expanded=casestudy.opened_bundle() is not None):
    upload = st.file_uploader(
        "A result bundle (.zip) saved from this page or written by `python -m core analyze`",
        type=["zip"], key=casestudy.uploader_key(), on_change=casestudy.open_upload, args=(handle,),
    )
    if upload is not None:
        error = casestudy.open_bundle(upload.name, upload.getvalue(), handle)
        if error:
            st.error(plain(error))  # it may quote names from the file
opened = casestudy.opened_bundle()
if opened is not None and opened.study.manifest["model"]["key"] != handle.key:
    casestudy.close_bundle()  # the model changed on the home page since the bundle was opened
    st.warning(plain(f"The bundle {opened.file_name} was closed: it belongs to another model than {handle.name}."))
    opened = None

c1, c2 = st.columns([2, 1], gap="medium")
# a bundle holds the metrics of its format version; the live study those of the model
offered = opened.study.metrics if opened is not None else metrics_for(handle)
if st.session_state.get("case_metric") not in offered:
    st.session_state.pop("case_metric", None)
metric = c1.selectbox(
    "Rank heads by", offered, key="case_metric", persist_state="session",
    format_func=lambda name: name.replace("_", " "), help="Global importance over the image set.",
)
c1.caption(METRIC_HELP[metric])
if handle.is_backbone:
    c1.caption(plain(f"{handle.name} is a backbone: {BACKBONE_REASON}."))
top_k = c2.slider("Heads to study", 1, casestudy.MAX_TOP_K, 5, key="case_top_k", persist_state="session")

if opened is not None:
    study = opened.study
    manifest = study.manifest
    shown = "the library study" if library.holds(opened.digest) else "the bundle"
    st.info(
        f"Showing {shown} **{plain(opened.file_name)}**: {plain(manifest['model']['name'])} on "
        f"{plain(manifest['image_set']['title'])}, created {plain(manifest['created'])}. Nothing is recomputed."
    )
    if manifest["image_set"]["key"] != ctx.image_set.key:
        st.caption("Its images differ from the current image set: the links to the views show the current set.")
    st.button("Back to the live analysis", on_click=casestudy.close_bundle, key="case_close_bundle")
    if top_k > study.settings.top_k:
        st.caption(f"The bundle studied {study.settings.top_k} heads per metric, so at most that many are shown.")
else:
    with sentence_on_error():
        study = casestudy.live_study(handle, ctx.image_set, casestudy.live_settings(top_k))

found = findings(study, metric, top_k=min(top_k, study.settings.top_k))
charts = case_charts(study, found)

st.subheader("Across layers")
st.markdown(plain(found.layer_trend))
if found.concentration:
    st.markdown(plain(found.concentration))
else:
    st.caption(
        "This bundle was saved before HeadScope measured sink heads and token norms; compute the case study again "
        "to see them."
    )

st.subheader(f"The {len(found.heads)} most important heads by {metric.replace('_', ' ')}")
names = {row["id"]: row for row in study.tables["images"].to_dict("records")}
for finding in found.heads:
    with st.container(border=True):
        st.markdown(f"#### {finding.rank}. {finding.label}")
        text, visual = st.columns([3, 2], gap="large")
        with text:
            for part, view, label in casestudy.FINDING_LINKS:
                if not getattr(finding, part):
                    continue  # no concentration sentence in a bundle saved before it was measured
                sentence, link = st.columns([6, 1], vertical_alignment="center")
                sentence.markdown(plain(getattr(finding, part)))
                title = casestudy.VIEW_PAGES[view][1]
                if link.button(label, key=f"case_{part}_{finding.label}", help=f"Make {finding.label} the focus head and open {title}."):
                    # the mechanism and the explanation are about the most hurt image: B2 and E show it
                    # when it is in the current set
                    about_image = part in ("mechanism", "explanation") and finding.hurt_images
                    image_id = finding.hurt_images[0] if about_image else None
                    casestudy.open_in_view(view, finding.layer, finding.head, ctx.image_set, image_id)
        with visual:
            if mode_chart_key(finding) in charts:
                export.chart(charts[mode_chart_key(finding)], f"case study {mode_chart_key(finding)}", width="content", theme=None)
            thumbs = [image_id for image_id in finding.hurt_images if image_id in study.thumbnails]
            if thumbs:
                # a row that wraps: five columns of a narrow card are narrower than a thumbnail
                strip = st.container(horizontal=True, gap="small")
                for image_id in thumbs:
                    row = names.get(image_id, {})
                    shown = casestudy.thumbnail_caption(str(row.get("name", image_id)), str(row.get("target", "")))
                    strip.image(study.thumbnails[image_id], caption=plain(shown), width=casestudy.THUMBNAIL_WIDTH)

st.subheader("The evidence")
for view, keys in casestudy.EVIDENCE.items():
    page, title = casestudy.VIEW_PAGES[view]
    st.markdown(f"##### {title}")
    navigation.link(st, page, f"Explore every head in {title}", ":material/arrow_forward:")
    for key in (key for key in keys if key in charts):
        # the report's own look (no Streamlit theme), so the page and the exported file match
        export.chart(charts[key], f"case study {key}", width="content", theme=None)
    if view == "explanations" and "relevance-maps" not in charts:
        st.caption(
            "This bundle was saved before HeadScope kept relevance maps; compute the case study again to see them."
            if int(study.manifest["format_version"]) < 4 else "No top head hurts any image, so there are no relevance maps."
        )

st.subheader("Export and share")
e1, e2 = st.columns(2)
stem = f"headscope-{study.manifest['model']['name']}-{study.manifest['image_set']['key'][:8]}"
e1.download_button(
    "Download the HTML report", data=lambda: render_report(study, metric, top_k=len(found.heads)),
    file_name=f"{stem}.html", mime="text/html", icon=":material/description:",
    help="One file with every chart, image, number, setting and library version; opens with no network.",
)
e2.download_button(
    "Download the result bundle", data=lambda: save_bundle(study), file_name=f"{stem}.zip", mime="application/zip",
    icon=":material/folder_zip:", help="Tables, arrays and a manifest; open it again above without recomputing.",
)
spec = models.current_spec()
model_args = "--model MODEL.zip" if spec.transformers_zip else f"--model {spec.name}"
model_args += f" --img-size {spec.img_size}" if spec.img_size else ""
model_args += " --checkpoint FILE" if spec.checkpoint_digest else ""
st.caption(
    "The same bundle from the command line, for batch jobs: "
    f"`python -m core analyze {model_args} --images DIR --out results.zip --report report.html`."
)
casestudy.library_form(study)
