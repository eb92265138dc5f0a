"""One chart of a study or a comparison by name, for a notebook: ``show(study, "importance-line")``.

Jupyter, VS Code and Colab display Altair charts as they are. ``chart`` builds one of
the charts the dashboard and the HTML reports draw, by the report's key, from a
``CaseStudy`` (``core.analyze`` or ``core.load_bundle``) or a ``Comparison``
(``core.compare``); ``show`` displays it; ``chart_names`` lists the keys a result has.
The charts are the pages' own builders (``viz.report.case_charts``,
``viz.compare.comparison_charts``), so a notebook shows what the pages show.
"""

from __future__ import annotations

import altair as alt

from core.errors import InvalidSetting
from core.study.casestudy import CaseStudy
from core.study.comparison import Comparison
from core.study.narrative import findings
from viz.compare import comparison_charts
from viz.report import case_charts

__all__ = ["chart", "chart_names", "show"]


def _charts(result: CaseStudy | Comparison, metric: str | None, top_k: int | None) -> dict[str, alt.TopLevelMixin]:
    if top_k is not None and top_k < 1:
        raise InvalidSetting(f"top_k is how many top heads the charts single out: at least 1, not {top_k}.")
    if isinstance(result, CaseStudy):
        return case_charts(result, findings(result, metric, top_k))
    if isinstance(result, Comparison):
        if metric is not None or top_k is not None:
            raise InvalidSetting("A comparison ranks its heads when it is made: pass metric= and top_k= to core.compare.")
        return comparison_charts(result)
    raise InvalidSetting(
        f"viz.chart draws a case study (core.analyze, core.load_bundle) or a comparison (core.compare), "
        f"not a {type(result).__name__}."
    )


def chart_names(result: CaseStudy | Comparison, metric: str | None = None, top_k: int | None = None) -> list[str]:
    """The names ``chart`` takes for ``result``, in the report's order.

    A study: ``modes-L<l>H<h>`` (partial pruning of each top head under ``metric``),
    ``importance-line``, ``importance-heatmap``, ``pruning-curve``, ``entropy-by-layer``,
    ``hop-profiles``, ``distance-by-layer``, ``concentration-by-layer``, ``pattern-space``,
    ``pattern-prototypes``, ``pattern-mse``, ``relevance-maps`` (the concentration and
    relevance charts only when the study holds them: studies saved by older versions may not). A comparison: ``trends``,
    ``curves``, ``difference-<measure>``, ``ranks``, ``patterns``, ``prototypes``.
    """
    return list(_charts(result, metric, top_k))


def chart(
    result: CaseStudy | Comparison, name: str, *, metric: str | None = None, top_k: int | None = None
) -> alt.TopLevelMixin:
    """The chart ``name`` of ``result`` (see ``chart_names``), ranked by ``metric`` with ``top_k`` top heads.

    ``metric`` and ``top_k`` default to the study's own (its first metric, its settings' top-k).

    Raises:
        InvalidSetting: ``name`` is not a chart of this result (the sentence lists those it has),
            ``top_k`` is below 1, or ``result`` is neither a study nor a comparison.
        UnsupportedMetric: the study does not hold ``metric``.
    """
    charts = _charts(result, metric, top_k)
    if name not in charts:
        raise InvalidSetting(f"This result has no chart {name!r}: choose one of {', '.join(charts)}.")
    return charts[name]


def show(result: CaseStudy | Comparison, name: str, *, metric: str | None = None, top_k: int | None = None) -> None:
    """Display the chart ``name`` of ``result`` in a notebook (Jupyter, VS Code, Colab); see ``chart``.

    Raises:
        InvalidSetting: as ``chart``, or when no notebook display (IPython) is available.
    """
    drawn = chart(result, name, metric=metric, top_k=top_k)
    try:
        from IPython.display import display
    except ImportError:
        raise InvalidSetting(
            "viz.show displays a chart in a notebook; outside one, save it: viz.chart(...).save('chart.html')."
        ) from None
    display(drawn)
