"""HeadScope core: all computation on Vision Transformers. Imports neither streamlit, altair nor vl_convert.

The Core API of the README and docs/core-api.md is importable from here (``from core import load_model, analyze``);
the report and the charts are in ``viz``.
"""

from core.errors import HeadScopeError
from core.measures.attention import extract_attention, outlier_tokens, token_norms
from core.measures.attribution import (
    answer_readout,
    attention_rollout,
    compare_faithfulness,
    faithfulness_areas,
    faithfulness_curves,
    faithfulness_summary,
    gradient_relevance,
    gradient_rollout,
    relevance_maps,
)
from core.measures.importance import head_importance, partial_pruning
from core.measures.strength import (
    attention_sink,
    hop_entropy,
    hop_strength,
    key_entropy,
    top_key_share,
)
from core.models.load import load_model, sample_set
from core.models.probe import fit_probe, probe_features, with_probe
from core.pipeline.analysis import analyze_set
from core.study.bundle import load_bundle, save_bundle
from core.study.casestudy import analyze
from core.study.comparison import compare
from core.study.library import Library
from core.study.narrative import findings

__all__ = [
    "HeadScopeError",
    "Library",
    "analyze",
    "analyze_set",
    "answer_readout",
    "attention_rollout",
    "attention_sink",
    "compare",
    "compare_faithfulness",
    "extract_attention",
    "faithfulness_areas",
    "faithfulness_curves",
    "faithfulness_summary",
    "findings",
    "fit_probe",
    "gradient_relevance",
    "gradient_rollout",
    "head_importance",
    "hop_entropy",
    "hop_strength",
    "key_entropy",
    "load_bundle",
    "load_model",
    "outlier_tokens",
    "partial_pruning",
    "probe_features",
    "relevance_maps",
    "sample_set",
    "save_bundle",
    "token_norms",
    "top_key_share",
    "with_probe",
]
