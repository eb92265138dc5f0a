"""Attention patterns (view D): attention maps, an autoencoder over them, their layout and clusters.

A *patch map* is one source patch's attention over all patches and a *CLS map* the CLS
token's; both are shaped as the patch grid. ``sample_maps`` streams a capped, seeded
sample of maps from every head and image out of the model; ``train_autoencoder`` fits a
small convolutional autoencoder to them (a new module: the analysed ViT is only read);
``project_patterns`` lays the latent codes out in 2-D (UMAP, or PCA) with one position
per head; ``cluster_patterns`` groups the codes with k-means and decodes each cluster's
centre into a prototype map. The remaining functions tabulate the focus head's
attention on one image for the link, matrix and histogram views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence, TypeVar

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from core.errors import InvalidSetting, NotEnoughImages, UnsupportedMapKind
from core.measures.attention import iter_attention
from core.measures.inference import Progress
from core.measures.projection import Method, layout_2d
from core.models.handle import ViTHandle, pick_device
from core.models.memory import out_of_memory_as_sentence
from core.settings import (
    DEFAULT_CLUSTERS,
    DEFAULT_MAX_MAPS,
    MAP_KINDS,
    MapKind,
    images_per_batch,
)

__all__ = [
    "AE_SIZE",
    "DEFAULT_CLUSTERS",
    "DEFAULT_MAX_MAPS",
    "LATENT_DIM",
    "MapKind",
    "MapSample",
    "PatternAutoencoder",
    "PatternClusters",
    "PatternLayout",
    "PatternSpace",
    "attention_cells",
    "autoencoder_input",
    "centre_on_source",
    "check_map_kind",
    "cluster_patterns",
    "display_shape",
    "draw_maps",
    "drawn_inputs",
    "grid_maps",
    "map_kinds",
    "project_patterns",
    "resize_maps",
    "sample_maps",
    "sample_maps_from",
    "strong_links",
    "token_names",
    "train_autoencoder",
    "training_steps",
    "weight_histogram",
]

ArrayT = TypeVar("ArrayT", torch.Tensor, np.ndarray)

AE_SIZE = 16  # every map is resized to AE_SIZE x AE_SIZE, so one autoencoder fits any grid
LATENT_DIM = 16
_ENCODE_CHUNK = 4096


# --- maps ------------------------------------------------------------------------------


def grid_maps(rows: ArrayT, grid: tuple[int, int], num_prefix_tokens: int) -> ArrayT:
    """The patch part of attention rows, shaped as the grid: patch maps and CLS maps.

    For one head's attention ``attn`` (``[T, T]``), the patch map of source patch ``s``
    is ``grid_maps(attn[num_prefix_tokens + s], ...)`` and the CLS map is
    ``grid_maps(attn[0], ...)`` (the CLS token comes first).

    Args:
        rows: ``[..., T]`` attention rows (one query token's weights over all keys), a
            tensor or a numpy array.

    Returns:
        ``[..., rows, cols]``: the weight on each patch at its grid position.
    """
    return rows[..., num_prefix_tokens:].reshape(*rows.shape[:-1], *grid)


def centre_on_source(maps: torch.Tensor, sources: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Shift each patch map so that its source patch sits at the centre.

    A head's pattern is a rule relative to the query ("look at yourself", "look one
    patch left"): in grid coordinates the same rule gives a different picture for every
    source patch, so maps of one head would scatter over the layout. Centred, they
    coincide. Offsets that fall outside the grid for a given source hold the map's
    mean weight: what the head would do there is unknown, and zeros would make one
    diffuse pattern look different for every source (its visible window moves).

    Args:
        maps: ``[M, rows, cols]`` patch maps.
        sources: ``[M]`` source patch index (row-major) of each map.

    Returns:
        ``[M, 2*rows - 1, 2*cols - 1]``; cell ``(rows - 1 + dy, cols - 1 + dx)`` holds the
        weight on the patch ``dy`` rows below and ``dx`` columns right of the source.
    """
    rows, cols = grid
    count = len(maps)
    out = maps.mean(dim=(-2, -1))[:, None, None].repeat(1, 2 * rows - 1, 2 * cols - 1)
    sources = sources.to(maps.device)
    row_index = torch.arange(rows, device=maps.device) - (sources // cols)[:, None] + rows - 1
    col_index = torch.arange(cols, device=maps.device) - (sources % cols)[:, None] + cols - 1
    which = torch.arange(count, device=maps.device)[:, None, None]
    out[which, row_index[:, :, None], col_index[:, None, :]] = maps
    return out


def resize_maps(maps: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``[M, h, w]`` -> ``[M, *shape]`` by area averaging (plain replication when enlarging by a whole factor)."""
    return F.adaptive_avg_pool2d(maps[:, None], shape)[:, 0]


def autoencoder_input(maps: torch.Tensor, sources: torch.Tensor | None, grid: tuple[int, int]) -> torch.Tensor:
    """What the autoencoder sees: each map centred (patch maps), resized and normalised.

    Normalisation: ``map / max(map) * share``, where ``share`` is the attention the query
    gives to patches at all (the rest goes to prefix tokens). Dividing by the peak makes
    the pattern's *shape* comparable between a sharp head and a diffuse one (raw, a
    uniform map is ~1/P everywhere and would look empty next to a one-hot map);
    multiplying by the share keeps apart what the shape alone confuses: a query that
    looks at the CLS token leaves only faint, near-uniform weight on the patches, which
    after peak scaling alone would look exactly like uniform attention.

    Args:
        maps: ``[M, rows, cols]`` patch or CLS maps (raw attention weights).
        sources: ``[M]`` source patch indices for patch maps (centred first), ``None`` for CLS maps.

    Returns:
        ``[M, 1, AE_SIZE, AE_SIZE]`` in ``[0, 1]``.
    """
    maps = maps.float()
    share = maps.sum(dim=(-2, -1))
    canvas = centre_on_source(maps, sources, grid) if sources is not None else maps
    resized = resize_maps(canvas, (AE_SIZE, AE_SIZE))
    peak = resized.amax(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (resized / peak * share[:, None, None]).unsqueeze(1)


def display_shape(kind: MapKind, grid: tuple[int, int]) -> tuple[int, int]:
    """Shape a decoded map is shown in: the offset window for centred patch maps, the grid for CLS maps."""
    rows, cols = grid
    return (2 * rows - 1, 2 * cols - 1) if kind == "patch" else (rows, cols)


# --- sampling --------------------------------------------------------------------------


@dataclass(frozen=True)
class MapSample:
    """A capped random sample of attention maps, ready for the autoencoder.

    Attributes:
        inputs: ``[M, 1, AE_SIZE, AE_SIZE]`` autoencoder inputs (see ``autoencoder_input``).
        origin: one row per map: ``layer``, ``head``, ``image`` (index in the set) and
            ``source`` (source patch index for patch maps, -1 for CLS maps).
        kind: ``"patch"`` or ``"cls"``.
        grid: the model's patch grid ``(rows, cols)``.
        num_layers: layers of the model.
        num_heads: heads per layer.
    """

    inputs: torch.Tensor
    origin: pd.DataFrame
    kind: MapKind
    grid: tuple[int, int]
    num_layers: int
    num_heads: int


def map_kinds(handle: ViTHandle) -> tuple[MapKind, ...]:
    """The map kinds the model has: CLS maps need a CLS token."""
    has_cls = getattr(handle.model, "cls_token", None) is not None
    return tuple(kind for kind in MAP_KINDS if kind == "patch" or has_cls)


def check_map_kind(handle: ViTHandle, kind: MapKind) -> None:
    """Raise ``UnsupportedMapKind`` with its sentence when the model has no maps of ``kind``."""
    if kind not in map_kinds(handle):
        raise UnsupportedMapKind("This model has no CLS token, so it has no CLS maps; use patch maps instead.")


@out_of_memory_as_sentence
def sample_maps(
    handle: ViTHandle,
    x: torch.Tensor | Sequence[Image.Image],
    *,
    kind: MapKind = "patch",
    max_maps: int = DEFAULT_MAX_MAPS,
    seed: int = 0,
    progress: Progress | None = None,
) -> MapSample:
    """A seeded sample of at most ``max_maps`` maps from every head, streamed over the images of ``x``.

    ``x`` is ``[N, C, H, W]`` or a list of PIL images; the attention of a few images at a time is read and
    dropped, so the set's full attention is never held. ``progress(images done, N)``.

    Raises:
        UnsupportedMapKind: ``kind`` is ``"cls"`` for a model without a CLS token.
        InvalidSetting: the cap leaves no map for some head.
        NotEnoughImages: ``x`` holds no image.
    """
    check_map_kind(handle, kind)
    step = images_per_batch(handle)

    def batches() -> Iterator[torch.Tensor]:
        for start in range(0, len(x), step):
            part = x[start:start + step]
            # PIL images are preprocessed per batch, so the set's input tensor is never held either
            part = part if isinstance(part, torch.Tensor) else handle.preprocess(part)
            yield from (batch.attn for batch in iter_attention(handle, part, batch_size=step))

    return sample_maps_from(
        batches(),
        num_images=len(x),
        grid=handle.grid,
        num_prefix_tokens=handle.num_prefix_tokens,
        kind=kind,
        max_maps=max_maps,
        seed=seed,
        progress=progress,
    )


def sample_maps_from(
    attention: Iterable[torch.Tensor],
    *,
    num_images: int,
    grid: tuple[int, int],
    num_prefix_tokens: int,
    kind: MapKind = "patch",
    max_maps: int = DEFAULT_MAX_MAPS,
    seed: int = 0,
    progress: Progress | None = None,
) -> MapSample:
    """``sample_maps`` over attention batches ``[B, L, H, T, T]`` of ``num_images`` images in order.

    The sample is stratified by head: each of the ``L * H`` heads gets the same number of
    maps, ``min(max_maps // (L * H), maps it has)``, drawn without replacement from all
    its (image, source) pairs. Equal counts make every head's mean position (D1) equally
    reliable and keep the density from being dominated by any one head.

    Raises:
        UnsupportedMapKind: ``kind`` is neither ``"patch"`` nor ``"cls"``.
        InvalidSetting: the cap leaves no map for some head.
        NotEnoughImages: ``attention`` yields no batch.
    """
    if kind not in MAP_KINDS:
        raise UnsupportedMapKind(f"Unknown map kind '{kind}'; use 'patch' or 'cls'.")
    sources = grid[0] * grid[1] if kind == "patch" else 1
    picks: pd.DataFrame | None = None
    inputs: list[torch.Tensor] = []
    start = num_layers = num_heads = 0
    for attn in attention:
        if picks is None:
            num_layers, num_heads = attn.shape[1], attn.shape[2]
            picks = draw_maps(num_images, sources, num_layers, num_heads, max_maps, seed)
        inputs.append(drawn_inputs(attn, picks, start, kind, grid, num_prefix_tokens))
        start += len(attn)
        if progress is not None:
            progress(start, num_images)
    if picks is None:
        raise NotEnoughImages("Attention patterns need at least one image.")
    origin = picks.assign(source=picks["source"] if kind == "patch" else -1).reset_index(drop=True)
    return MapSample(torch.cat(inputs), origin, kind, grid, num_layers, num_heads)


def drawn_inputs(
    attn: torch.Tensor, picks: pd.DataFrame, first: int, kind: MapKind, grid: tuple[int, int], num_prefix_tokens: int
) -> torch.Tensor:
    """Autoencoder inputs of the drawn maps of images ``first`` onwards, from their attention ``[B, L, H, T, T]``.

    ``picks`` is the whole draw (ordered by image, see ``draw_maps``); only its rows of these
    ``B`` images are read.
    """
    lo, hi = np.searchsorted(picks["image"].to_numpy(), [first, first + len(attn)])
    part = picks.iloc[lo:hi]
    local = torch.tensor(part["image"].to_numpy() - first)
    layer = torch.tensor(part["layer"].to_numpy())
    head = torch.tensor(part["head"].to_numpy())
    if kind == "patch":
        source = torch.tensor(part["source"].to_numpy())
        query, centre = num_prefix_tokens + source, source
    else:
        query, centre = torch.zeros_like(layer), None  # the CLS token's row
    maps = grid_maps(attn[local, layer, head, query], grid, num_prefix_tokens)
    return autoencoder_input(maps, centre, grid)


def draw_maps(num_images: int, sources: int, num_layers: int, num_heads: int, max_maps: int, seed: int) -> pd.DataFrame:
    """Which maps to take: columns image, layer, head, source; ordered by image for streaming.

    ``sources``: query tokens a map may start from per image (the patches, or 1 for the CLS row).
    Stratified by head as ``sample_maps_from`` describes; seeded, so a set's draw is the same on every process.

    Raises:
        InvalidSetting: ``max_maps`` below the ``L * H`` heads.
    """
    heads = num_layers * num_heads
    if max_maps < heads:
        raise InvalidSetting(
            f"The sample cap of {max_maps} maps is below the model's {heads} heads; "
            "raise it so that every head contributes at least one map."
        )
    pool = num_images * sources
    per_head = min(max_maps // heads, pool)
    rng = np.random.default_rng(seed)
    flat = np.concatenate([rng.choice(pool, size=per_head, replace=False) for _ in range(heads)])
    head_index = np.repeat(np.arange(heads), per_head)
    image, source = np.divmod(flat, sources)
    order = np.lexsort((source, head_index, image))
    return pd.DataFrame(
        {
            "image": image[order],
            "layer": head_index[order] // num_heads,
            "head": head_index[order] % num_heads,
            "source": source[order],
        }
    )


# --- autoencoder -----------------------------------------------------------------------


class PatternAutoencoder(nn.Module):
    """Convolutional autoencoder for ``[B, 1, AE_SIZE, AE_SIZE]`` maps with a ``latent_dim`` code.

    Two strided convolutions (16 -> 8 -> 4) and a linear layer encode; the mirror
    image decodes to logits, and ``decode`` applies the sigmoid (inputs lie in [0, 1]).
    Small on purpose: tens of thousands of maps train in seconds on two CPU cores.
    """

    def __init__(self, latent_dim: int = LATENT_DIM) -> None:
        super().__init__()
        side = AE_SIZE // 4
        self.encoder = nn.Sequential(
            nn.Conv2d(1, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(32 * side * side, latent_dim),
        )
        self.decoder = nn.Sequential(
            nn.Linear(latent_dim, 32 * side * side),
            nn.ReLU(),
            nn.Unflatten(1, (32, side, side)),
            nn.ConvTranspose2d(32, 16, 4, stride=2, padding=1),
            nn.ReLU(),
            nn.ConvTranspose2d(16, 1, 4, stride=2, padding=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits ``[B, 1, AE_SIZE, AE_SIZE]``."""
        return self.decoder(self.encoder(x))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latent codes ``[B, latent_dim]``."""
        return self.encoder(x)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Maps ``[B, 1, AE_SIZE, AE_SIZE]`` in ``[0, 1]`` for codes ``[B, latent_dim]``."""
        return torch.sigmoid(self.decoder(z))


def _seeded_init(module: nn.Module, generator: torch.Generator) -> None:
    """Initialise from ``generator`` rather than the global RNG, which other sessions share."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight, generator=generator)
            nn.init.zeros_(layer.bias)


@dataclass(frozen=True)
class PatternSpace:
    """A trained autoencoder and the latent code of every sampled map.

    Attributes:
        latents: ``[M, latent_dim]`` code of each map, in the order of ``origin``.
        origin: one row per map: layer, head, image, source (see ``MapSample``).
        autoencoder: the trained ``PatternAutoencoder``, on the CPU, frozen.
        kind: ``"patch"`` or ``"cls"``.
        grid: the model's patch grid.
        num_layers: layers of the model.
        num_heads: heads per layer.
        reconstruction_mse: mean squared error per pixel of the reconstructions.
        baseline_mse: the same error for always answering the mean map, for scale.
    """

    latents: np.ndarray
    origin: pd.DataFrame
    autoencoder: PatternAutoencoder
    kind: MapKind
    grid: tuple[int, int]
    num_layers: int
    num_heads: int
    reconstruction_mse: float
    baseline_mse: float


def training_steps(num_maps: int, *, epochs: int = 8, batch_size: int = 256, min_steps: int = 300) -> int:
    """Optimiser steps for ``num_maps`` maps: ``epochs`` passes, but never fewer than ``min_steps``.

    The floor keeps small samples from stopping before the codes have settled; the
    epoch count bounds the time of large ones (20,000 maps: 625 steps).
    """
    return max(min_steps, math.ceil(epochs * num_maps / batch_size))


def train_autoencoder(
    sample: MapSample,
    *,
    latent_dim: int = LATENT_DIM,
    steps: int | None = None,
    batch_size: int = 256,
    learning_rate: float = 3e-3,
    noise: float = 0.1,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: Progress | None = None,
) -> PatternSpace:
    """Fit a ``PatternAutoencoder`` to ``sample`` and encode every map.

    A denoising autoencoder: it sees each map with Gaussian noise (``noise`` std) added and
    must reconstruct the clean map. Without it, the codes of diffuse maps spread with
    every pixel of jitter, further than the codes of sharp patterns that differ by a
    whole patch, and k-means then splits diffuse maps by noise instead of telling
    patterns apart. Trains with binary cross-entropy, since inputs are intensities in
    [0, 1] and mostly near zero (mean squared error learns to answer blank maps).

    Weights, mini-batches and noise come from one ``torch.Generator`` seeded with
    ``seed``: on the CPU the result is the same on every run. Runs on ``device``
    (default: the best present); ``progress(steps done, steps)``.
    """
    dev = pick_device(device)
    steps = training_steps(len(sample.inputs), batch_size=batch_size) if steps is None else steps
    generator = torch.Generator().manual_seed(seed)
    model = PatternAutoencoder(latent_dim)
    _seeded_init(model, generator)
    model.to(dev).train()
    data = sample.inputs.to(dev)
    optimiser = torch.optim.Adam(model.parameters(), lr=learning_rate)
    order = torch.randperm(len(data), generator=generator)
    cursor = 0
    report_every = max(1, steps // 50)
    with torch.enable_grad():
        for step in range(steps):
            if cursor >= len(order):
                order, cursor = torch.randperm(len(data), generator=generator), 0
            batch = data[order[cursor:cursor + batch_size].to(dev)]
            cursor += batch_size
            jitter = torch.randn(batch.shape, generator=generator).to(dev) * noise
            loss = F.binary_cross_entropy_with_logits(model(batch + jitter), batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            if progress is not None and ((step + 1) % report_every == 0 or step + 1 == steps):
                progress(step + 1, steps)
    model.eval().requires_grad_(False)
    # encode each distinct map once: batched kernels can give identical maps codes that
    # differ in the last bits, which would turn "all maps alike" into a spurious spread
    distinct, inverse, counts = torch.unique(data, dim=0, return_inverse=True, return_counts=True)
    latents, squared_error = [], 0.0
    with torch.inference_mode():
        for part, weight in zip(distinct.split(_ENCODE_CHUNK), counts.split(_ENCODE_CHUNK)):
            z = model.encode(part)
            latents.append(z)
            squared_error += float((((model.decode(z) - part) ** 2).sum(dim=(1, 2, 3)) * weight).sum())
        baseline = float(((data - data.mean(dim=0)) ** 2).mean())
    return PatternSpace(
        latents=torch.cat(latents)[inverse].cpu().numpy(),
        origin=sample.origin,
        autoencoder=model.cpu(),
        kind=sample.kind,
        grid=sample.grid,
        num_layers=sample.num_layers,
        num_heads=sample.num_heads,
        reconstruction_mse=squared_error / data.numel(),
        baseline_mse=baseline,
    )


# --- layout and clusters ---------------------------------------------------------------


@dataclass(frozen=True)
class PatternLayout:
    """2-D positions of the sampled maps and of each head.

    Attributes:
        samples: one row per map: layer, head, image, source, x, y.
        heads: one row per head: layer, head, head_label (``L{l}H{h}``), x, y (mean of
            its maps' positions), maps (how many).
        method: ``"umap"`` or ``"pca"``.
    """

    samples: pd.DataFrame
    heads: pd.DataFrame
    method: Method


def project_patterns(space: PatternSpace, *, method: Method = "umap", seed: int = 0) -> PatternLayout:
    """Lay out the latent codes in 2-D; a head sits at the mean of its maps' positions.

    UMAP runs with umap-learn's compact defaults (``min_dist=0.1``, ``spread=1``): D1 shows
    the samples' density, so tight clusters are wanted, unlike the image overview where
    single images must stay apart. 100 epochs suffice for a density view and halve the
    wait, and exact neighbours avoid compiling umap's approximate search (see
    ``layout_2d``).
    """
    xy = layout_2d(
        space.latents, method, seed=seed, min_dist=0.1, spread=1.0, n_epochs=100, exact_neighbors=True
    )
    samples = space.origin.assign(x=xy[:, 0].astype(float), y=xy[:, 1].astype(float))
    heads = (
        samples.groupby(["layer", "head"], as_index=False)
        .agg(x=("x", "mean"), y=("y", "mean"), maps=("x", "size"))
        .assign(head_label=_head_labels)
    )
    return PatternLayout(samples=samples, heads=heads[["layer", "head", "head_label", "x", "y", "maps"]], method=method)


def _head_labels(frame: pd.DataFrame) -> pd.Series:
    """``L{layer}H{head}`` for each row of a frame with layer and head columns."""
    return "L" + frame["layer"].astype(str) + "H" + frame["head"].astype(str)


@dataclass(frozen=True)
class PatternClusters:
    """Pattern clusters: k-means on the latent codes, largest cluster first.

    Attributes:
        labels: ``[M]`` cluster of each map, in the order of ``PatternSpace.origin``.
        clusters: one row per cluster: cluster, maps, share (of all maps), heads
            (comma-separated labels of its member heads), head_count.
        heads: one row per head: layer, head, head_label, cluster (where most of its maps
            fall: its member cluster), share (of its maps in that cluster).
        prototypes: the decoded centre of each cluster, long form: cluster, row, col, value.
            For patch maps row/col are offsets ``dy``/``dx`` from the source patch (the
            source is ``(0, 0)``); for CLS maps they are grid positions.
    """

    labels: np.ndarray
    clusters: pd.DataFrame
    heads: pd.DataFrame
    prototypes: pd.DataFrame


def cluster_patterns(space: PatternSpace, *, n_clusters: int = DEFAULT_CLUSTERS, seed: int = 0) -> PatternClusters:
    """k-means on the latent codes, each cluster's centre decoded into a prototype map.

    Clustering the codes of individual maps (not one point per head) lets a head that
    mixes patterns show it through its share; a head's member cluster is where most of
    its maps fall. ``n_clusters`` is reduced to the number of distinct codes when there
    are fewer (one image, constant maps), so no cluster is empty.
    """
    from sklearn.cluster import KMeans

    latents = space.latents
    k = max(1, min(n_clusters, len(np.unique(latents, axis=0))))
    fitted = KMeans(n_clusters=k, n_init=4, random_state=seed).fit(latents)
    counts = np.bincount(fitted.labels_, minlength=k)
    by_size = sorted(range(k), key=lambda c: (-counts[c], c))
    relabel = np.empty(k, dtype=np.int64)
    relabel[by_size] = np.arange(k)
    labels = relabel[fitted.labels_]
    centres = torch.as_tensor(fitted.cluster_centers_[by_size], dtype=torch.float32)

    origin = space.origin.assign(cluster=labels)
    table = pd.crosstab([origin["layer"], origin["head"]], origin["cluster"])
    heads = pd.DataFrame(
        {
            "layer": table.index.get_level_values("layer"),
            "head": table.index.get_level_values("head"),
            "cluster": table.columns.to_numpy()[table.to_numpy().argmax(axis=1)],
            "share": table.to_numpy().max(axis=1) / table.to_numpy().sum(axis=1),
        }
    )
    heads.insert(2, "head_label", _head_labels(heads))
    members = heads.groupby("cluster")["head_label"].agg(list)
    clusters = pd.DataFrame({"cluster": np.arange(k), "maps": np.bincount(labels, minlength=k)})
    clusters["share"] = clusters["maps"] / len(labels)
    clusters["heads"] = [", ".join(members.get(c, [])) for c in range(k)]
    clusters["head_count"] = [len(members.get(c, [])) for c in range(k)]
    return PatternClusters(labels=labels, clusters=clusters, heads=heads, prototypes=_prototypes(space, centres))


def _prototypes(space: PatternSpace, centres: torch.Tensor) -> pd.DataFrame:
    """Decode cluster centres ``[k, latent_dim]`` into maps of the display shape, in long form."""
    with torch.inference_mode():
        decoded = space.autoencoder.decode(centres)[:, 0]
    shape = display_shape(space.kind, space.grid)
    maps = resize_maps(decoded, shape).numpy()
    k, height, width = maps.shape
    cluster, row, col = np.meshgrid(np.arange(k), np.arange(height), np.arange(width), indexing="ij")
    if space.kind == "patch":  # offsets from the source, which sits at the window's centre
        row, col = row - (space.grid[0] - 1), col - (space.grid[1] - 1)
    return pd.DataFrame(
        {"cluster": cluster.ravel(), "row": row.ravel(), "col": col.ravel(), "value": maps.ravel().astype(float)}
    )


# --- the focus head on one image (D2-D5) -------------------------------------------------


def token_names(handle: ViTHandle) -> list[str]:
    """A short name per token: ``CLS``, ``DIST``, ``REG1``..., then ``p{i} ({row},{col})`` for patches."""
    model = handle.model
    prefix = []
    if getattr(model, "cls_token", None) is not None:
        prefix.append("CLS")
    if getattr(model, "dist_token", None) is not None:
        prefix.append("DIST")
    prefix += [f"REG{i + 1}" for i in range(handle.num_prefix_tokens - len(prefix))]
    cols = handle.grid[1]
    return prefix + [f"p{i} ({i // cols},{i % cols})" for i in range(handle.grid[0] * cols)]


def attention_cells(attn: np.ndarray, names: list[str], num_prefix_tokens: int) -> pd.DataFrame:
    """One row per (source, target) pair of one head's ``[T, T]`` attention.

    Columns: source (query token index), target (key token index), source_name,
    target_name, weight, prefix (whether either end is a prefix token: such links are
    drawn on the blue scale, patch-to-patch links on the orange one).
    """
    t = attn.shape[0]
    source, target = np.divmod(np.arange(t * t), t)
    names_array = np.asarray(names, dtype=object)
    return pd.DataFrame(
        {
            "source": source,
            "target": target,
            "source_name": names_array[source],
            "target_name": names_array[target],
            "weight": attn.reshape(-1).astype(float),
            "prefix": (source < num_prefix_tokens) | (target < num_prefix_tokens),
        }
    )


def strong_links(cells: pd.DataFrame, threshold: float, max_links: int = 3000) -> pd.DataFrame:
    """The cells with ``weight >= threshold``, at most the ``max_links`` strongest (a browser draws them all)."""
    kept = cells[cells["weight"] >= threshold]
    return kept.nlargest(max_links, "weight") if len(kept) > max_links else kept


def weight_histogram(weights: np.ndarray, bins: int = 50) -> pd.DataFrame:
    """Counts of attention weights in ``bins`` equal bins over ``[0, 1]``: columns start, end, count."""
    counts, edges = np.histogram(np.asarray(weights, dtype=float).ravel(), bins=bins, range=(0.0, 1.0))
    return pd.DataFrame({"start": edges[:-1], "end": edges[1:], "count": counts})
