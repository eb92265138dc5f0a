"""HeadScope core: all computation on Vision Transformers. Never imports streamlit."""
