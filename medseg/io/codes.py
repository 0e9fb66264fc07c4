"""What a structure's name means: SNOMED CT codes and a display colour, from a table shipped as data.

``structure_codes.json`` (package data) holds:

- ``structures``: TotalSegmentator's structure names (``liver``, ``kidney_cyst_left``,
  ``vertebrae_L1``…) with their segmented property category, type (and type modifier, anatomic
  region) codes and a recommended RGB colour (TotalSegmentator's SNOMED mapping, Apache 2.0);
- ``terms``: words that make a name a lesion class (``tumour``, ``lesion``, ``metastasis``,
  ``nodule``, ``cyst``, ``oedema``, ``necrosis``, ``enhancing``…), each with its morphology code;
- ``generic``: the code of anything else (SNOMED CT "Tissue").

:func:`structure_code` looks a name up in that order: the exact name (case-insensitive, blanks and
hyphens read as ``_``), then the first term that is a word of the name, then the generic code with
a colour derived from the name (the same name always gets the same colour).
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from importlib import resources

__all__ = ["Code", "StructureCode", "structure_code", "LESION_CATEGORY"]

# SNOMED CT "Morphologically abnormal structure": the category of every lesion class.
LESION_CATEGORY = "49755003"


@dataclass(frozen=True)
class Code:
    """One coded concept: coding scheme designator (``"SCT"``), code value and code meaning."""

    scheme: str
    value: str
    meaning: str


@dataclass(frozen=True)
class StructureCode:
    """What a structure name means.

    Attributes:
        name: the name looked up.
        category, type: segmented property category and type codes.
        type_modifier: e.g. SCT 7771000 "Left", or ``None``.
        anatomic_region, anatomic_region_modifier: where a lesion class lies (``kidney_cyst_left``:
            Kidney, Left), or ``None``.
        rgb: recommended display colour, three integers 0–255.
        source: ``"table"`` (the name is in the table), ``"term"`` (a lesion word of the name) or
            ``"generic"``.
    """

    name: str
    category: Code
    type: Code
    rgb: tuple[int, int, int]
    source: str
    type_modifier: Code | None = None
    anatomic_region: Code | None = None
    anatomic_region_modifier: Code | None = None

    @property
    def is_lesion(self) -> bool:
        """True for a lesion class: category "Morphologically abnormal structure" (tumours, cysts,
        metastases, nodules, oedema, necrosis…)."""
        return self.category.scheme == "SCT" and self.category.value == LESION_CATEGORY


@functools.lru_cache(maxsize=1)
def _table() -> dict:
    text = resources.files("medseg.io").joinpath("structure_codes.json").read_text(encoding="utf-8")
    return json.loads(text)


def _code(triple) -> Code | None:
    return None if not triple else Code(*(str(v) for v in triple))


def _normal(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _name_colour(name: str) -> tuple[int, int, int]:
    """A bright colour derived from the name's hash (stable across runs and machines)."""
    import colorsys

    h = hashlib.blake2b(name.encode("utf-8"), digest_size=4).digest()
    hue = int.from_bytes(h[:2], "big") / 65535.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75 + 0.25 * h[2] / 255.0, 0.85 + 0.15 * h[3] / 255.0)
    return (round(r * 255), round(g * 255), round(b * 255))


def structure_code(name: str) -> StructureCode:
    """The codes and colour of the structure called ``name`` (see the module docstring)."""
    table = _table()
    key = _normal(name)
    entry = table["structures"].get(key)
    if entry is not None:
        return StructureCode(name=name, category=_code(entry["category"]), type=_code(entry["type"]),
                             rgb=tuple(entry["rgb"]), source="table", type_modifier=_code(entry.get("type_modifier")),
                             anatomic_region=_code(entry.get("anatomic_region")),
                             anatomic_region_modifier=_code(entry.get("anatomic_region_modifier")))
    words = set(re.split(r"[_\W\d]+", key))
    for term in table["terms"]:
        if words & set(term["words"]):
            return StructureCode(name=name, category=_code(term["category"]), type=_code(term["type"]),
                                 rgb=tuple(term["rgb"]), source="term")
    generic = table["generic"]
    return StructureCode(name=name, category=_code(generic["category"]), type=_code(generic["type"]),
                         rgb=_name_colour(key), source="generic")
