"""HeadScope charts: every Altair builder of the pages and the HTML report.

Pure builders (a tidy DataFrame in, an ``alt.Chart`` out) by view: ``viz.overview`` (A),
``viz.importance`` (B), ``viz.strength`` (C), ``viz.patterns`` (D), the pieces they share
in ``viz.common``, the self-contained HTML report in ``viz.report``, and two studies
side by side in ``viz.compare`` and its report ``viz.compare_report``. In a notebook,
``viz.show(study, "importance-line")`` displays one of those charts by name (``viz.show``).
viz imports core (tables, constants), never streamlit; core never imports viz.
"""

from viz.show import chart, chart_names, show

__all__ = ["chart", "chart_names", "show"]
