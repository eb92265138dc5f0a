"""2-D layouts of feature vectors: a quick PCA, and UMAP once numba has compiled it.

umap-learn compiles its numba kernels on first use, about 40 s per new process on
a 2-core machine. ``start_umap_warmup`` pays that in a background thread when the
server starts; until ``umap_ready()`` the app shows the PCA layout instead of waiting.
"""

from __future__ import annotations

import threading
import warnings
from typing import Literal

import numpy as np

__all__ = [
    "Method",
    "join_umap_warmup",
    "layout_2d",
    "start_umap_warmup",
    "umap_failed",
    "umap_ready",
    "wait_for_umap",
]

Method = Literal["pca", "umap"]

_warm_done = threading.Event()
_warm_lock = threading.Lock()
_warm_thread: threading.Thread | None = None
_warm_error: list[BaseException] = []


def layout_2d(
    features: np.ndarray,
    method: Method = "pca",
    *,
    seed: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 1.0,
    spread: float = 3.0,
    n_epochs: int | None = None,
    exact_neighbors: bool = False,
) -> np.ndarray:
    """``[N, 2]`` positions for ``[N, D]`` features; any ``N >= 1``, constant features included.

    The keyword arguments tune UMAP (see ``_umap``); PCA ignores them.
    """
    features = np.asarray(features, dtype=np.float32)
    n = len(features)
    if n == 0:
        return np.zeros((0, 2), dtype=np.float32)
    variation = features.std(axis=0).max() if n > 1 else 0.0
    if n < 3 or not np.isfinite(variation) or variation < 1e-12:
        # nothing to separate: spread the points on a line so every one stays visible
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, dtype=np.float32)], axis=1)
    if method == "umap" and n >= 5:
        return _umap(
            features,
            seed,
            n_neighbors=n_neighbors,
            min_dist=min_dist,
            spread=spread,
            n_epochs=n_epochs,
            exact_neighbors=exact_neighbors,
        )
    return _pca(features)


def _pca(features: np.ndarray) -> np.ndarray:
    from sklearn.decomposition import PCA

    components = min(2, features.shape[1], len(features))
    out = PCA(n_components=components, random_state=0).fit_transform(features)
    if components < 2:
        out = np.concatenate([out, np.zeros((len(out), 2 - components))], axis=1)
    return out.astype(np.float32)


def _umap(
    features: np.ndarray,
    seed: int,
    *,
    n_neighbors: int = 15,
    # well-separated classes collapse into dots at UMAP's defaults; a wider spread keeps
    # the images inside each cluster apart so single images can be seen and clicked
    min_dist: float = 1.0,
    spread: float = 3.0,
    n_epochs: int | None = None,
    exact_neighbors: bool = False,
) -> np.ndarray:
    """UMAP positions; ``n_epochs=None`` is umap's own choice (500 up to 10,000 points, else 200).

    ``exact_neighbors`` finds the neighbours with scikit-learn instead of umap: above
    4,096 points umap switches to its approximate search (pynndescent), whose numba
    kernels the background warm-up does not compile (another ~35 s on first use).
    """
    import umap

    n_neighbors = max(2, min(n_neighbors, len(features) - 1))
    knn = _exact_neighbors(features, n_neighbors) if exact_neighbors else (None, None, None)
    reducer = umap.UMAP(
        n_neighbors=n_neighbors,
        n_components=2,
        min_dist=min_dist,
        spread=spread,
        n_epochs=n_epochs,
        random_state=seed,
        init="spectral" if len(features) > n_neighbors + 2 else "random",
        n_jobs=1,
        precomputed_knn=knn,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # umap warns that random_state disables parallelism
        return reducer.fit_transform(features).astype(np.float32)


def _exact_neighbors(features: np.ndarray, n_neighbors: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Each point's ``n_neighbors`` nearest points, counting itself, as umap's ``precomputed_knn``."""
    from sklearn.neighbors import NearestNeighbors

    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(features).kneighbors(features)
    return indices.astype(np.int64), distances.astype(np.float32), None


def _warm() -> None:
    try:
        rng = np.random.default_rng(0)
        _umap(rng.normal(size=(64, 8)).astype(np.float32), seed=0)
    except BaseException as err:  # a broken umap install must not kill the server thread silently
        _warm_error.append(err)
    finally:
        _warm_done.set()


def start_umap_warmup() -> None:
    """Compile UMAP in a daemon thread, once per process; returns at once."""
    global _warm_thread
    with _warm_lock:
        if _warm_thread is None:
            _warm_thread = threading.Thread(target=_warm, name="umap-warmup", daemon=True)
            _warm_thread.start()


def umap_ready() -> bool:
    """True once the warm-up finished without error (UMAP then runs without compiling)."""
    return _warm_done.is_set() and not _warm_error


def umap_failed() -> bool:
    """True when the warm-up raised: UMAP is unusable in this process and PCA is final."""
    return _warm_done.is_set() and bool(_warm_error)


def join_umap_warmup(timeout: float | None = None) -> None:
    """Wait for a warm-up that was started (no-op otherwise), e.g. before the process exits."""
    if _warm_thread is not None:
        _warm_thread.join(timeout)


def wait_for_umap(timeout: float | None = None) -> bool:
    """Block until the warm-up ends (for scripts and tests); True if UMAP is usable."""
    start_umap_warmup()
    _warm_done.wait(timeout)
    return umap_ready()
