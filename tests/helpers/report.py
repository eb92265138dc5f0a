"""The hostile names the report tests give a study, and the report's markup without its inlined Vega bundle."""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Sequence

from core.study.casestudy import findings

HOSTILE_IMAGE = "<script>alert(1)</script>.png"
HOSTILE_MODEL = "<b onmouseover=alert(2)>vit</b>"
HOSTILE_CLASS = "<img src=x onerror=alert(3)>"
# names of the other images: each would be fetched if a tooltip rendered it as <img src=NAME>
URL_NAMES = ["https://host/{i}.png", "https:host?{i}.png", "<img src=x{i} onerror=alert(4)>.png", "//host/{i}.png"]


def with_hostile_names(study):
    """``study`` with a script for a cited image's name, a tag for the model name and a class name.

    Every other image is named by a URL or an <img> tag (each form on some image a
    partial-pruning chart shows), so that every such dot's tooltip carries one.
    """
    cited = findings(study).heads[0].hurt_images[0]
    images = study.tables["images"].copy()
    shown = dict.fromkeys(i for finding in findings(study).heads for i in finding.hurt_images if i != cited)
    order = [*shown, *(i for i in images["id"] if i not in shown)]
    renamed = {image_id: URL_NAMES[n % len(URL_NAMES)].format(i=n) for n, image_id in enumerate(order)}
    images["name"] = images["id"].map(renamed)
    row = images["id"] == cited
    images.loc[row, "name"] = HOSTILE_IMAGE
    images.loc[row, "target"] = HOSTILE_CLASS
    manifest = json.loads(json.dumps(study.manifest))
    manifest["model"]["name"] = HOSTILE_MODEL
    manifest["model"]["class_names"][0] = HOSTILE_CLASS
    for item in manifest["image_set"]["images"]:
        item["name"] = HOSTILE_IMAGE if item["id"] == cited else renamed.get(item["id"], item["name"])
    return dataclasses.replace(study, manifest=manifest, tables={**study.tables, "images": images})


def without_bundle(document: str) -> str:
    """The document minus the first <script>: the inlined Vega bundle, whose code builds tags and names URLs."""
    start = document.index("<script>")
    return document[:start] + document[document.index("</script>", start) + len("</script>"):]


def assert_sections_in_order(report: str, sections: Sequence[tuple[str, str]]) -> None:
    """Each ``(anchor, heading)`` is a section of ``report`` with that heading, in that order."""
    positions = []
    for key, title in sections:
        match = re.search(rf'<section id="{key}">\s*<h2>{title}</h2>', report)
        assert match is not None, key
        positions.append(match.start())
    assert positions == sorted(positions)
