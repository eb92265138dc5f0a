"""Streamlit glue shared by the pages: cached loaders, session selections, widgets. The charts are in ``viz``."""
