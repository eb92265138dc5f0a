"""Head importance page (view B): cached computations, the ranked table, head picking.

The set's tables come from its staged analysis (``results.importance_so_far``): the
first pass's Taylor preview at once, every metric when the exact sweep has finished;
partial pruning of one head on one image is cached by the model's key and the image's
id (a hash of its bytes). The page's charts are in ``viz.importance``.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd
import streamlit as st
import torch

from core.inputs.images import ImageSet
from core.measures.importance import (
    METRICS,
    HeadImportance,
    partial_pruning,
    rank_heads,
)
from core.measures.importance import target_measure as core_target_measure
from core.models.handle import ViTHandle
from core.pipeline.staged import JobView
from ui import export, results, selection, stages
from ui.display import sentence_on_error
from viz.importance import CHART_HEIGHT, unpruned_value

__all__ = [
    "GLOBAL",
    "LOCAL",
    "ImportanceState",
    "baseline_value",
    "importance_state",
    "metric_values",
    "partial",
    "partial_table",
    "show_ranked_table",
    "target_measure",
    "top5_table",
]

GLOBAL, LOCAL = "Over the set (global)", "Focus image (local)"  # B1's scope radio


# --- cached computations ---------------------------------------------------------------


def target_measure(image_set: ImageSet) -> str:
    """What 'accuracy' means on this set: against labels, the unpruned model, or both."""
    return core_target_measure([label is not None for label in image_set.labels])


@dataclass(frozen=True)
class ImportanceState:
    """What the importance page can show now: the exact tables once the sweep is done, else the preview.

    Attributes:
        tables: every metric's tables (exact: on the job's sample), or the first pass's
            (Taylor only; a backbone's holds none) while the sweep runs.
        exact: ``tables`` are the exact sweep's.
        curve: the pruning curve, once it has finished.
        job: the staged analysis, for its sample and its progress panel.
    """

    tables: HeadImportance
    exact: bool
    curve: pd.DataFrame | None
    job: JobView

    @property
    def metrics(self) -> tuple[str, ...]:
        present = set(self.tables.overall["metric"])
        return tuple(metric for metric in METRICS if metric in present)

    @property
    def sample_note(self) -> str:
        return stages.sample_note(self.job) if self.exact else ""

    def has_image(self, image: int) -> bool:
        return bool((self.tables.unpruned["image"] == image).any())


def importance_state(handle: ViTHandle, image_set: ImageSet) -> ImportanceState:
    """The importance of every head as far as the set's staged analysis has got (never waits for the sweep)."""
    job, exact, pruning = results.importance_so_far(handle, image_set)
    if exact is not None:
        return ImportanceState(exact, True, pruning, job)
    first = job.preview
    assert first is not None
    return ImportanceState(first.importance, False, None, job)


@st.cache_data(max_entries=64, show_spinner="Masking the head's attention…")
def _partial(
    model_key: str, image_id: str, layer: int, head: int, target: int | None,
    _handle: ViTHandle, _images: ImageSet, _unpruned: torch.Tensor,
) -> pd.DataFrame:
    x = _handle.preprocess([_images.by_id(image_id).image])
    return partial_pruning(_handle, x, layer, head, target, unpruned=_unpruned)


def partial(handle: ViTHandle, image_set: ImageSet, image_id: str, layer: int, head: int) -> pd.DataFrame:
    """B2/B3 for one head on one image; the target is the image's label when known, as in B1.

    A backbone has no target class (its labels name the set's folders, not outputs), and
    its table has no probabilities: only what each mode removes and its output impact.
    """
    target = None if handle.is_backbone else image_set.by_id(image_id).label
    # mode "none" is the unpruned output, which the set's first pass holds
    unpruned = torch.from_numpy(results.preview(handle, image_set).predictions.logits[image_set.index_of(image_id)])
    with sentence_on_error():
        return _partial(handle.key, image_id, layer, head, target, handle, image_set, unpruned)


# --- head picking ----------------------------------------------------------------------


def _pick_from_table(key: str, ranked: pd.DataFrame) -> None:
    rows = st.session_state[key].selection.rows
    if rows:
        row = ranked.iloc[rows[0]]
        selection.set_focus_head(int(row["layer"]), int(row["head"]))


def show_ranked_table(ranked: pd.DataFrame, key: str, value_title: str) -> None:
    """The ranked heads as a table; selecting a row makes that head the focus head."""
    export.table(
        ranked[["rank", "head_label", "value"]], f"B1 ranked heads {value_title}",
        key=key,
        on_select=lambda: _pick_from_table(key, ranked),
        selection_mode="single-row",
        hide_index=True,
        height=CHART_HEIGHT,
        width="stretch",
        column_config={
            # fixed widths for the short columns leave the value its room in a narrow column
            "rank": st.column_config.NumberColumn("rank", width=48),
            "head_label": st.column_config.TextColumn("head", width=64),
            "value": st.column_config.NumberColumn(value_title, format="%.4f"),
        },
    )


# --- tables ----------------------------------------------------------------------------

# Metrics that measure how much pruning a head changes something: nothing, for the unpruned model
_IMPACT_METRICS = frozenset({"layer_impact", "output_impact"})


def baseline_value(tables: HeadImportance, metric: str, image: int | None) -> float | None:
    """What B1's dashed rule marks: the unpruned model's value of ``metric`` (on one image, or over the set).

    The unpruned model changes nothing, so its impact is 0; a target probability or
    accuracy is measured (a backbone offers neither); a Taylor gradient has no
    unpruned value (``None``).
    """
    if metric in _IMPACT_METRICS:
        return 0.0
    return unpruned_value(tables, metric, image)


def metric_values(tables: HeadImportance, metric: str, image: int | None) -> pd.DataFrame:
    """One metric's value per head, over the set (``image`` None) or on one image.

    Columns layer, head, metric, value, head_label, index (``l * H + h``, the x of the
    paper's line), rank (1 = most important).
    """
    table = tables.overall if image is None else tables.per_image[tables.per_image["image"] == image]
    ranked = rank_heads(table, metric)
    num_heads = int(ranked["head"].max()) + 1
    return ranked.assign(
        head_label=[f"L{layer}H{head}" for layer, head in zip(ranked["layer"], ranked["head"])],
        index=ranked["layer"] * num_heads + ranked["head"],
    )


def partial_table(partial: pd.DataFrame) -> pd.DataFrame:
    """``partial_pruning``'s modes as a table for display: mode, removed_attention, output_impact.

    What each mode removes is left out: the mode picker above the table names it.
    """
    return partial[["mode", "removed_attention", "output_impact"]]


def top5_table(partial_row: pd.Series) -> pd.DataFrame:
    """``partial_pruning``'s top5 list of one mode as columns rank, class, probability."""
    top = partial_row["top5"]
    return pd.DataFrame(
        {"rank": range(1, len(top) + 1), "class": [name for name, _ in top], "probability": [p for _, p in top]}
    )
