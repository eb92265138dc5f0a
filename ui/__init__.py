"""Streamlit glue shared by the pages; the charts are in ``viz``.

``models`` and ``images``: what the session analyses (the model, the image set); ``jobs`` and
``results``: the set's shared analysis; ``selection``: the focus image and head; ``sidebar``:
what every view page starts from; ``overview``, ``importance``, ``strength``, ``patterns``,
``attribution``, ``casestudy``, ``probe``: each view's own glue; ``stages``, ``export``,
``display``, ``navigation``: widgets they share.
"""

__all__: list[str] = []  # the modules are imported by name: ``from ui import results``
