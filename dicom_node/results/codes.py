"""Coded concepts for what m3edge reports: VISTA3D structures, BraTS regions, CXR pathologies, procedures.

SNOMED CT codes are used only where the concept is in DICOM PS3.16 as pydicom ships it (a unit test checks every
one against pydicom's dictionary); everything else gets a code in the local scheme ``99M3EDGE`` whose meaning is the
name the model uses. Laterality is a modifier (SNOMED "Left"/"Right") on a non-lateral concept where SNOMED has no
pre-coordinated one in PS3.16.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from pydicom.sr.coding import Code

__all__ = [
    "LOCAL_SCHEME",
    "StructureCoding",
    "structure_coding",
    "pathology_code",
    "procedure_code",
    "local_code",
    "KNOWN_STRUCTURES",
    "ANATOMICAL_STRUCTURE",
    "MORPHOLOGICALLY_ABNORMAL_STRUCTURE",
    "AI_SCORE",
    "DRAFT_STATEMENT",
    "QUESTION",
    "READER_COMMENT",
    "VERIFICATION_STATEMENT",
    "QUALITATIVE_EVALUATIONS",
    "PRESENT",
    "local_coding_scheme",
    "ABSENT",
]

LOCAL_SCHEME = "99M3EDGE"

ANATOMICAL_STRUCTURE = Code("91723000", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ABNORMAL_STRUCTURE = Code("49755003", "SCT", "Morphologically Abnormal Structure")
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
PRESENT = Code("52101004", "SCT", "Present")
ABSENT = Code("272519000", "SCT", "Absent")  # CID 241 with Present
# TID 1500 row 10: the document-level Qualitative Evaluations container
QUALITATIVE_EVALUATIONS = Code("C0034375", "UMLS", "Qualitative Evaluations")

AI_SCORE = Code("AISCORE", LOCAL_SCHEME, "AI model score")
DRAFT_STATEMENT = Code("AIDRAFT", LOCAL_SCHEME, "AI draft statement")
QUESTION = Code("QUESTION", LOCAL_SCHEME, "Question asked of the model")
READER_COMMENT = Code("121106", "DCM", "Comment")
VERIFICATION_STATEMENT = Code("AIVERIFIED", LOCAL_SCHEME, "Verification statement")

_NEOPLASM = Code("108369006", "SCT", "Neoplasm")
_LESION = Code("52988006", "SCT", "Lesion")
_MASS = Code("4147007", "SCT", "Mass")
_CYST = Code("367643001", "SCT", "Cyst")
_KIDNEY = Code("64033007", "SCT", "Kidney")
_LIVER = Code("10200004", "SCT", "Liver")
_LUNG = Code("39607008", "SCT", "Lung")
_PANCREAS = Code("15776009", "SCT", "Pancreas")
_COLON = Code("71854001", "SCT", "Colon")
_BONE = Code("272673000", "SCT", "Bone")
_BRAIN = Code("12738006", "SCT", "Brain")


@dataclass(frozen=True)
class StructureCoding:
    """How one segment is coded in a SEG and in the SR's measurement group."""

    category: Code
    type: Code
    type_modifier: Code | None = None  # laterality
    anatomic_region: Code | None = None  # for abnormalities: where they are

    @property
    def is_local(self) -> bool:
        return self.type.scheme_designator == LOCAL_SCHEME


def local_code(name: str) -> Code:
    """A code in the local scheme for a name without a SNOMED code in PS3.16: readable, at most 16 characters."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("name must be a non-empty str to make a local code")
    slug = re.sub(r"[^A-Z0-9]+", "-", name.upper()).strip("-")[:16].rstrip("-")
    return Code(slug or "UNNAMED", LOCAL_SCHEME, name)


def _anatomy(value: str, meaning: str, side: Code | None = None) -> StructureCoding:
    return StructureCoding(ANATOMICAL_STRUCTURE, Code(value, "SCT", meaning), side)


def _abnormal(kind: Code, region: Code, side: Code | None = None) -> StructureCoding:
    return StructureCoding(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, kind, side, region)


def _vertebrae() -> dict[str, StructureCoding]:
    values = {
        "C1": "14806007", "C2": "39976000", "C3": "113205007", "C4": "5329002", "C5": "36978003", "C6": "36054005",
        "C7": "87391001", "T1": "64864005", "T2": "53733008", "T3": "1626008", "T4": "73071006", "T5": "56401006",
        "T6": "45296009", "T7": "62487009", "T8": "11068009", "T9": "82687006", "T10": "7610001", "T11": "12989004",
        "T12": "23215003", "L1": "66794005", "L2": "14293000", "L3": "36470004", "L4": "11994002", "L5": "49668003",
    }
    return {f"vertebrae {level}": _anatomy(code, f"{level} vertebra") for level, code in values.items()}


def _sided(name: str, value: str, meaning: str) -> dict[str, StructureCoding]:
    return {f"left {name}": _anatomy(value, meaning, LEFT), f"right {name}": _anatomy(value, meaning, RIGHT)}


# Keys are the names VISTA3D (label dictionary of the MONAI bundle), BraTS and the service use, lower case.
KNOWN_STRUCTURES: dict[str, StructureCoding] = {
    "liver": _anatomy("10200004", "Liver"),
    "kidney": _anatomy("64033007", "Kidney"),
    "spleen": _anatomy("78961009", "Spleen"),
    "pancreas": _anatomy("15776009", "Pancreas"),
    "aorta": _anatomy("15825003", "Aorta"),
    "inferior vena cava": _anatomy("64131007", "Inferior vena cava"),
    "gallbladder": _anatomy("28231008", "Gallbladder"),
    "esophagus": _anatomy("32849002", "Esophagus"),
    "stomach": _anatomy("69695003", "Stomach"),
    "duodenum": _anatomy("38848004", "Duodenum"),
    "bladder": _anatomy("89837001", "Bladder"),
    "rectum": _anatomy("34402009", "Rectum"),
    "small bowel": _anatomy("30315005", "Small intestine"),
    "lung": _anatomy("39607008", "Lung"),
    "bone": _anatomy("272673000", "Bone"),
    "brain": _anatomy("12738006", "Brain"),
    "left lung upper lobe": _anatomy("44714003", "Structure of upper lobe of left lung (body structure)"),
    "left lung lower lobe": _anatomy("90572001", "Lower lobe of lung", LEFT),
    "right lung upper lobe": _anatomy("45653009", "Upper lobe of lung", RIGHT),
    "right lung middle lobe": _anatomy("72481006", "Middle lobe of right lung"),
    "right lung lower lobe": _anatomy("90572001", "Lower lobe of lung", RIGHT),
    "trachea": _anatomy("44567001", "Trachea"),
    "colon": _anatomy("71854001", "Colon"),
    "sacrum": _anatomy("54735007", "Sacrum"),
    "brachiocephalic trunk": _anatomy("12691009", "brachiocephalic trunk"),
    "left common carotid artery": _anatomy("113263003", "Left Common Carotid Artery"),
    "right common carotid artery": _anatomy("65355003", "Right Common Carotid Artery"),
    "left subclavian artery": _anatomy("85235006", "Left Subclavian Artery"),
    "right subclavian artery": _anatomy("29700009", "Right Subclavian Artery"),
    "costal cartilages": _anatomy("50016007", "Costal Cartilage"),
    "heart": _anatomy("80891009", "Heart"),
    "prostate": _anatomy("41216001", "Prostate"),
    "pulmonary vein": _anatomy("122972007", "Pulmonary vein"),
    "skull": _anatomy("89546000", "Skull"),
    "spinal cord": _anatomy("2748008", "Spinal cord"),
    "sternum": _anatomy("56873002", "Sternum"),
    "superior vena cava": _anatomy("48345005", "Superior vena cava"),
    "thyroid gland": _anatomy("69748006", "Thyroid"),
    "airway": _anatomy("89187006", "Airway structure"),
    **_sided("kidney", "64033007", "Kidney"),
    **_sided("adrenal gland", "23451007", "Adrenal gland"),
    **_sided("iliac artery", "73634005", "Common iliac artery"),
    **_sided("iliac vena", "46027005", "Common iliac vein"),
    **_sided("humerus", "85050009", "Humerus"),
    **_sided("scapula", "79601000", "Scapula"),
    **_sided("clavicula", "51299004", "Clavicle"),
    **_sided("femur", "71341001", "Femur"),
    **_sided("autochthon", "44947003", "Erector spinae muscle"),
    **_sided("brachiocephalic vein", "8887007", "Brachiocephalic vein"),
    **_vertebrae(),
    "lung tumor": _abnormal(_NEOPLASM, _LUNG),
    "pancreatic tumor": _abnormal(_NEOPLASM, _PANCREAS),
    "hepatic tumor": _abnormal(_NEOPLASM, _LIVER),
    "liver tumor": _abnormal(_NEOPLASM, _LIVER),
    "colon cancer primaries": _abnormal(_NEOPLASM, _COLON),
    "bone lesion": _abnormal(_LESION, _BONE),
    "kidney mass": _abnormal(_MASS, _KIDNEY),
    "left kidney cyst": _abnormal(_CYST, _KIDNEY, LEFT),
    "right kidney cyst": _abnormal(_CYST, _KIDNEY, RIGHT),
    # BraTS regions (labels 1 necrotic/non-enhancing core, 2 oedema, 4 enhancing): no PS3.16 SNOMED concept
    "tumor core": StructureCoding(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, Code("BRATS-TC", LOCAL_SCHEME, "Tumor core"),
                                  None, _BRAIN),
    "whole tumor": StructureCoding(MORPHOLOGICALLY_ABNORMAL_STRUCTURE, Code("BRATS-WT", LOCAL_SCHEME, "Whole tumor"),
                                   None, _BRAIN),
    "enhancing tumor": StructureCoding(MORPHOLOGICALLY_ABNORMAL_STRUCTURE,
                                       Code("BRATS-ET", LOCAL_SCHEME, "Enhancing tumor"), None, _BRAIN),
}
_ALIASES = {"tc": "tumor core", "wt": "whole tumor", "et": "enhancing tumor"}
_ABNORMAL_WORDS = ("tumor", "tumour", "lesion", "cancer", "mass", "cyst", "nodule")


def structure_coding(name: str) -> StructureCoding:
    """The coding of a segment by its name; a local code (category by the name's wording) when none is known."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("structure name must be a non-empty str")
    key = " ".join(name.lower().split())
    key = _ALIASES.get(key, key)
    if key in KNOWN_STRUCTURES:
        return KNOWN_STRUCTURES[key]
    abnormal = any(word in key for word in _ABNORMAL_WORDS)
    category = MORPHOLOGICALLY_ABNORMAL_STRUCTURE if abnormal else ANATOMICAL_STRUCTURE
    return StructureCoding(category, local_code(name))


_PATHOLOGIES: dict[str, Code] = {
    "pneumothorax": Code("36118008", "SCT", "Pneumothorax"),
    "edema": Code("19242006", "SCT", "Pulmonary edema"),
    "fibrosis": Code("112674009", "SCT", "Fibrosis"),
    "effusion": Code("60046008", "SCT", "Pleural effusion"),
    "cardiomegaly": Code("287272002", "SCT", "Cardiomegaly"),
    "nodule": Code("27925004", "SCT", "Nodule"),
    "mass": Code("4147007", "SCT", "Mass"),
    "lung lesion": Code("52988006", "SCT", "Lesion"),
}


def pathology_code(name: str) -> Code:
    """A CXR pathology (TorchXRayVision's names, e.g. ``Pleural_Thickening``) as a coded finding."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("pathology name must be a non-empty str")
    key = " ".join(name.replace("_", " ").lower().split())
    return _PATHOLOGIES.get(key) or local_code(name.replace("_", " "))


_PROCEDURES = {
    "CT": Code("77477000", "SCT", "Computed tomography"),
    "MR": Code("113091000", "SCT", "Magnetic resonance imaging"),
    "CR": Code("168537006", "SCT", "Plain radiography"),
    "DX": Code("168537006", "SCT", "Plain radiography"),
}
_IMAGING_PROCEDURE = Code("363679005", "SCT", "Imaging procedure")


def procedure_code(modality: str) -> Code:
    """The Procedure Reported (CID 100) for the modality of the analysed series."""
    if not isinstance(modality, str):
        raise TypeError(f"modality must be a str, got {type(modality).__name__}")
    return _PROCEDURES.get(modality.upper(), _IMAGING_PROCEDURE)


def local_coding_scheme():
    """The Coding Scheme Identification item declaring ``99M3EDGE`` in every object that uses it."""
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    return CodingSchemeIdentificationItem(
        designator=LOCAL_SCHEME,
        name="m3edge local codes for AI findings without a SNOMED CT concept in DICOM PS3.16",
        responsible_organization="m3edge",
    )
