"""What several test modules share, one module a concern; no test module imports another.

- ``data``: paths (``ROOT``, ``APP``, ``DATA``, ``VIEW_PAGES``), the stored bundles in ``tests/data``, and
  ``ACROSS_CPUS``, the tolerance stored figures are compared with.
- ``models``: ``tiny_vit``, a few-thousand-parameter timm ViT.
- ``attention``: ``random_attention``, row-stochastic attention for measures.
- ``transformers``: small random Hugging Face models, saved, zipped or put in a fake hub cache.
- ``memory``: the fixed memory budget and a model ZIP too large for it.
- ``images``: PNG bytes and hostile PNG headers.
- ``archives``: ZIP members damaged on purpose (corrupt deflate, encrypted, unknown method).
- ``bundles``: a saved bundle's members, and a bundle edited member by member.
- ``markdown``: the text a reader sees of a Markdown source, and what in it would be live markup.
- ``tooltips``: the tooltip keys of a Vega-Lite spec, walked and compiled.
- ``report``: the hostile names of the report tests.
- ``app``: Streamlit AppTest helpers (start the app, read a page's text and charts).
- ``browser``: Debian's Chromium and the flags it runs with offline.
- ``cli``: the command line's flags for a quick case study.

Fixtures stay in ``tests/conftest.py``; these are plain functions and constants, imported as
``from helpers.app import started_app`` (``tests`` is on ``pythonpath`` in ``pytest.ini``).
"""
