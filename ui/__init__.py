"""Streamlit glue shared by the pages: cached loaders, session selections, charts."""
