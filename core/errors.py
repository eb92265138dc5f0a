"""Errors a user can cause. Each carries one sentence the user can act on."""

from __future__ import annotations

__all__ = [
    "BundleRejected",
    "CheckpointRejected",
    "HeadScopeError",
    "ImageRejected",
    "InvalidSetting",
    "LabelsMismatch",
    "LibraryError",
    "LibraryFull",
    "LibraryUnavailable",
    "ModelTooLarge",
    "ModelUnavailable",
    "NonFiniteOutputs",
    "NotEnoughImages",
    "NothingToCompare",
    "OutOfMemory",
    "ProbeRejected",
    "StudyDamaged",
    "StudyNotFound",
    "UnsupportedMapKind",
    "UnsupportedMetric",
    "UnsupportedModel",
    "human_size",
]


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


class ModelTooLarge(ModelUnavailable):
    """The model's declared weights, or one image's analysis at its input size, would need more memory than
    the server's budget (``core.settings.memory_budget``); refused before its weights are read."""


class OutOfMemory(HeadScopeError):
    """The memory allocator failed during an analysis (the server ran short of memory)."""


class UnsupportedMetric(HeadScopeError, ValueError):
    """A metric or target the model cannot give: a class-based one asked of a backbone without classes,
    a name that is no head-importance metric, or a metric a case study does not hold."""


class ProbeRejected(HeadScopeError):
    """A linear probe cannot be used: not a probe file, a card that does not match its weights, or fitted
    on another backbone or feature input."""


class BundleRejected(HeadScopeError):
    """A result bundle cannot be opened: not a bundle, damaged, unsafe or from another model."""


class InvalidSetting(HeadScopeError, ValueError):
    """A setting or argument out of range: an input size that does not fit the patches, a batch size,
    sample cap or curve step count too small, a layer, head or target class the model lacks, a
    map kind that does not exist, or a command-line flag or output path that cannot be used."""


class NotEnoughImages(HeadScopeError, ValueError):
    """An analysis was given an empty image set, or fewer images than the processes it is sharded over."""


class UnsupportedMapKind(HeadScopeError, ValueError):
    """A kind of attention map the model cannot give: CLS maps of a model without a CLS token, or a kind
    that is neither ``"patch"`` nor ``"cls"``."""


class LabelsMismatch(HeadScopeError, ValueError):
    """Labels or class names that do not fit: not one label per image, a label past the model's (or the
    set's) classes, or a class-name list whose length is not the model's number of outputs."""


class NothingToCompare(HeadScopeError, ValueError):
    """Two studies that hold no measure in common, so there is nothing to put side by side."""


class LibraryError(HeadScopeError):
    """Base class of what the study library on the server (``core.study.library``) refuses."""


class LibraryUnavailable(LibraryError):
    """The study library's folder cannot be created, written or read, or its index cannot be read; the
    sentence names the folder and says how to point ``HEADSCOPE_LIBRARY`` elsewhere or turn it off."""


class LibraryFull(LibraryError):
    """A study larger than the library's cap on one study, or a save that would take the library past
    its quota (``HEADSCOPE_LIBRARY_MB``); the sentence says how much is used."""


class StudyNotFound(LibraryError):
    """No study in the library has this id (whatever the string: a wrong, hostile or removed one), or an
    id prefix given on the command line matches no study or several."""


class StudyDamaged(LibraryError):
    """A study's file in the library is missing, differs from the bytes it was saved with, or no longer
    opens as a bundle."""


def human_size(num_bytes: int) -> str:
    """A byte count as a sentence shows it: ``512 bytes``, ``1.5 KB``, ``200 MB``."""
    if num_bytes >= 2**20:
        return f"{num_bytes / 2**20:.1f}".removesuffix(".0") + " MB"
    if num_bytes >= 2**10:
        return f"{num_bytes / 2**10:.1f}".removesuffix(".0") + " KB"
    return f"{num_bytes} bytes"
