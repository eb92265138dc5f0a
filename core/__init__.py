"""HeadScope core: all computation on Vision Transformers. Imports neither streamlit, altair nor vl_convert.

The README's Core API is importable from here (``from core import load_model, analyze``);
the report and the charts are in ``viz``.
"""

from core.analysis import analyze_set
from core.attention import extract_attention
from core.bundle import load_bundle, save_bundle
from core.casestudy import analyze, findings
from core.errors import HeadScopeError
from core.importance import head_importance, partial_pruning
from core.model import load_model
from core.strength import hop_entropy, hop_strength

__all__ = [
    "HeadScopeError",
    "analyze",
    "analyze_set",
    "extract_attention",
    "findings",
    "head_importance",
    "hop_entropy",
    "hop_strength",
    "load_bundle",
    "load_model",
    "partial_pruning",
    "save_bundle",
]
