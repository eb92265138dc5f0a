"""The server's study library as the pages use it: which library, saving a study to it, reading one back.

The library (``core.study.library``) is one folder on the server (``HEADSCOPE_LIBRARY``) that every
session shares: a study saved in one browser opens in any other, from the Library page or from a
link (``?study=<id>``). A study's id is the sha256 of its bundle's bytes, so a bundle opened from an
upload is a library study whenever the library holds the same bytes. Every read goes through the
library's checks (the file's hash, then the bundle's own), so a damaged study is a sentence here.
"""

from __future__ import annotations

import streamlit as st

from core.errors import HeadScopeError, LibraryUnavailable, StudyDamaged
from core.study.bundle import load_bundle, save_bundle
from core.study.casestudy import CaseStudy
from core.study.library import (
    ENV_LIBRARY,
    Library,
    LibraryEntry,
    library_from_environment,
    study_id,
)

__all__ = [
    "OFF_SENTENCE",
    "add",
    "current",
    "entry_label",
    "holds",
    "listed",
    "opened_study",
    "save",
    "usage_sentence",
]

OFF_SENTENCE = f"The study library is off on this server ({ENV_LIBRARY}=off)."


def current() -> tuple[Library | None, str | None]:
    """The server's library, or ``None`` and the sentence that says why there is none (off, or a bad setting).

    A study larger than the server's upload limit is refused, as an upload of it would be.
    """
    try:
        library = library_from_environment(max_study_bytes=int(st.get_option("server.maxUploadSize")) * 2**20)
    except HeadScopeError as err:  # a quota that is not a number of MB
        return None, str(err)
    return (library, None) if library is not None else (None, OFF_SENTENCE)


def save(study: CaseStudy, title: str, note: str = "") -> tuple[LibraryEntry | None, str]:
    """Save the study's bundle to the library: ``add``."""
    return add(save_bundle(study), title, note)


def add(data: bytes, title: str, note: str = "") -> tuple[LibraryEntry | None, str]:
    """Add a bundle's bytes (checked like any upload) to the library.

    Returns:
        The entry and the sentence that says it was saved (or that the library already held these
        bytes, under their first title); or ``None`` and the sentence that says why not.
    """
    library, why = current()
    if library is None:
        return None, why or OFF_SENTENCE
    held = holds(study_id(data))
    try:
        entry = library.add(data, title=title, note=note)
    except HeadScopeError as err:  # not a bundle, over quota, not writable, a title too long
        return None, str(err)
    if held:
        return entry, f"The library already holds this study, as '{entry.title}'."
    return entry, f"Saved to the library as '{entry.title}'."


def holds(study_id: str) -> bool:
    """The library has this study, undamaged: a link can name it."""
    library, _ = current()
    if library is None:
        return False
    try:
        return library.get(study_id).damaged is None
    except HeadScopeError:
        return False


def opened_study(study_id: str) -> tuple[LibraryEntry, bytes, CaseStudy]:
    """The study's entry, its checked bytes and the study they hold (a bundle of any model).

    Raises:
        HeadScopeError: no library, no such study, or a damaged one, in a sentence for the user.
    """
    library, why = current()
    if library is None:
        raise LibraryUnavailable(why or OFF_SENTENCE)
    entry = library.get(study_id)
    if entry.damaged:
        raise StudyDamaged(entry.damaged)
    data = library.read(study_id)
    return entry, data, _opened(str(library.folder), study_id, data)


@st.cache_resource(max_entries=4, show_spinner="Opening the study…")
def _opened(folder: str, study_id: str, _data: bytes) -> CaseStudy:
    # the id is the bytes' sha256, which ``read`` checked: the same id is the same study for every session
    return load_bundle(_data)


def usage_sentence(library: Library) -> str:
    """How full the library is; or, when its index cannot be read, the sentence that says so."""
    try:
        used, count = library.usage()
    except HeadScopeError as err:
        return str(err)
    limit = library.quota_bytes / 2**20
    return f"The library holds {count} stud{'y' if count == 1 else 'ies'}: {used / 2**20:.1f} of {limit:.0f} MB used."


def entry_label(entry: LibraryEntry) -> str:
    """A study as a picker lists it: its title, model and the day it was saved."""
    return f"{entry.title} · {entry.model_name} · {entry.saved[:10]}"


def listed(text: str = "", model: str | None = None) -> tuple[list[LibraryEntry], str | None]:
    """The library's studies (``Library.entries``), or none and the sentence that says why (off, an unreadable index)."""
    library, why = current()
    if library is None:
        return [], why
    try:
        return library.entries(text, model), None
    except HeadScopeError as err:
        return [], str(err)

