"""DICOM JSON (PS3.18 Annex F) to the Native DICOM Model XML (PS3.19 Annex A), the format Google
answers STOW-RS with by default and serves for `application/dicom+xml` metadata and searches.

Private attributes follow PS3.19: the `tag` attribute carries `gggg00ee` and `privateCreator`
names the block's creator (taken from the `(gggg,00xx)` element of the same data set, which is
itself not written). Google's STOW failure detail is such an attribute:
`<DicomAttribute tag="00090097" vr="LT" keyword="FailureDetail" privateCreator="GOOGLE">`.
"""

from __future__ import annotations

from typing import Any
from xml.etree.ElementTree import Element, SubElement, tostring

from pydicom.datadict import keyword_for_tag

# Keywords of private attributes the emulator writes itself: (creator, group, element byte).
PRIVATE_KEYWORDS = {("GOOGLE", 0x0009, 0x97): "FailureDetail"}
_PN_COMPONENTS = ("FamilyName", "GivenName", "MiddleName", "NamePrefix", "NameSuffix")


def to_xml(dataset: dict[str, Any]) -> bytes:
    root = Element("NativeDicomModel")
    _add_attributes(root, dataset)
    return tostring(root, encoding="utf-8", xml_declaration=False)


def _creators(dataset: dict[str, Any]) -> dict[tuple[int, int], str]:
    """(group, block) -> private creator, from the (gggg,0010-00FF) elements."""
    creators = {}
    for key, element in dataset.items():
        tag = int(key, 16)
        group, elem = tag >> 16, tag & 0xFFFF
        if group % 2 == 1 and 0x10 <= elem <= 0xFF and element.get("Value"):
            creators[(group, elem)] = str(element["Value"][0])
    return creators


def _add_attributes(parent: Element, dataset: dict[str, Any]) -> None:
    creators = _creators(dataset)
    for key in sorted(dataset):
        tag = int(key, 16)
        group, elem = tag >> 16, tag & 0xFFFF
        element = dataset[key]
        attrs = {"tag": key.upper(), "vr": element.get("vr", "UN")}
        if group % 2 == 1:
            if 0x10 <= elem <= 0xFF:
                continue  # a private creator: written as the privateCreator of its block
            creator = creators.get((group, elem >> 8))
            if creator is not None:
                attrs["tag"] = f"{group:04X}00{elem & 0xFF:02X}"
                attrs["privateCreator"] = creator
                keyword = PRIVATE_KEYWORDS.get((creator, group, elem & 0xFF))
                if keyword:
                    attrs["keyword"] = keyword
        else:
            keyword = keyword_for_tag(tag)
            if keyword:
                attrs["keyword"] = keyword
        node = SubElement(parent, "DicomAttribute", _ordered(attrs))
        _add_value(node, element)


def _ordered(attrs: dict[str, str]) -> dict[str, str]:
    order = ("tag", "vr", "keyword", "privateCreator")
    return {k: attrs[k] for k in order if k in attrs}


def _add_value(node: Element, element: dict[str, Any]) -> None:
    vr = element.get("vr")
    if "BulkDataURI" in element:
        SubElement(node, "BulkData", {"uri": str(element["BulkDataURI"])})
        return
    if "InlineBinary" in element:
        SubElement(node, "InlineBinary").text = str(element["InlineBinary"])
        return
    for number, value in enumerate(element.get("Value") or [], start=1):
        if vr == "SQ":
            _add_attributes(SubElement(node, "Item", {"number": str(number)}), value or {})
        elif vr == "PN":
            _add_person_name(SubElement(node, "PersonName", {"number": str(number)}), value or {})
        elif value is not None:
            SubElement(node, "Value", {"number": str(number)}).text = _text(value)


def _add_person_name(node: Element, name: dict[str, str]) -> None:
    for group in ("Alphabetic", "Ideographic", "Phonetic"):
        if not name.get(group):
            continue
        group_node = SubElement(node, group)
        for component, text in zip(_PN_COMPONENTS, name[group].split("^"), strict=False):
            if text:
                SubElement(group_node, component).text = text


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)
