"""Streamlit glue shared by the pages: cached loaders, session selections, widgets. The charts are in ``viz``."""

__all__: list[str] = []  # the modules are imported by name: ``from ui import session``
