"""HeadScope charts: every Altair builder of the pages and the HTML report.

Pure builders (a tidy DataFrame in, an ``alt.Chart`` out) by view: ``viz.overview`` (A),
``viz.importance`` (B), ``viz.strength`` (C), ``viz.patterns`` (D), the pieces they share
in ``viz.common``, and the self-contained HTML report in ``viz.report``. viz imports core
(tables, constants), never streamlit; core never imports viz.
"""
