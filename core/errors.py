"""Errors a user can cause. Each carries one sentence the user can act on."""

from __future__ import annotations


class HeadScopeError(Exception):
    """Base class: ``str(error)`` is a complete sentence fit to show to a user."""


class ImageRejected(HeadScopeError):
    """An uploaded image (or archive) cannot be used; the message names it and says why."""


class CheckpointRejected(HeadScopeError):
    """A checkpoint file cannot be loaded safely or does not fit the architecture."""


class ModelUnavailable(HeadScopeError):
    """The requested model cannot be built or its weights cannot be found."""


class NonFiniteOutputs(ModelUnavailable):
    """The model's outputs or attention are NaN or infinite for the images it was given."""


class UnsupportedModel(ModelUnavailable):
    """The model exists but is not a ViT whose blocks use timm's standard ``Attention``."""


class UnsupportedMetric(HeadScopeError, ValueError):
    """A metric or target the model cannot give: a class-based one asked of a backbone without classes."""


class InvalidSetting(HeadScopeError, ValueError):
    """A setting of an analysis out of its range (a sample cap, a step count, a map kind, a batch size)."""


class EmptyImageSet(HeadScopeError, ValueError):
    """An analysis was asked of no images, or of fewer images than it needs."""


class UnsupportedMapKind(HeadScopeError, ValueError):
    """Attention maps of a kind the model does not have: CLS maps of a model without a CLS token."""


class BundleRejected(HeadScopeError):
    """A result bundle cannot be opened: not a bundle, damaged, unsafe or from another model."""


def human_size(num_bytes: int) -> str:
    """A byte count as a sentence shows it: ``512 bytes``, ``1.5 KB``, ``200 MB``."""
    if num_bytes >= 2**20:
        return f"{num_bytes / 2**20:.1f}".removesuffix(".0") + " MB"
    if num_bytes >= 2**10:
        return f"{num_bytes / 2**10:.1f}".removesuffix(".0") + " KB"
    return f"{num_bytes} bytes"
