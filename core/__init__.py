"""HeadScope core: all computation on Vision Transformers. Imports neither streamlit, altair nor vl_convert."""
