"""Vietnamese (and English) reports written from a synthetic study's lesions, in the release's phrasing.

The phrasing follows how the release's radiologists write (learned from ../shared/realdata/reports.jsonl, no
line copied): "Hình ảnh <lesion> ở <location>, kích thước A x B mm, tăng chuyển hóa FDG (SUVmax: X,Y)" with a
decimal comma; physiological uptake stated per region; an explicit normal sentence where a region has nothing;
an impression that lists each lesion with its interpretation and closes with the whole-body statement.
Every size, SUVmax and location in a report comes from a lesion in the image, and no other number appears, so
the text is learnable from the volumes.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

from jaxpetct.text.lesion import NONE_VALUE, Lesion
from jaxpetct.text.report import ABDOMEN_PELVIS, CHEST, HEAD_NECK, MUSCULOSKELETAL, SECTIONS, Report


@dataclasses.dataclass(frozen=True)
class SiteText:
    region: str  # head_neck / chest / abdomen_pelvis (regions.REGION_SECTIONS keys)
    section: str  # findings section that describes it
    kind: str  # lung / node / liver / bone
    vi: str  # location, Vietnamese
    en: str  # location, English


def _sites() -> dict[str, SiteText]:
    s = {}
    for key, vi, en in (("rul", "thùy trên phổi phải", "the right upper lobe"),
                        ("rml", "thùy giữa phổi phải", "the right middle lobe"),
                        ("rll", "thùy dưới phổi phải", "the right lower lobe"),
                        ("lul", "thùy trên phổi trái", "the left upper lobe"),
                        ("lll", "thùy dưới phổi trái", "the left lower lobe")):
        s["lung_" + key] = SiteText("chest", CHEST, "lung", vi, en)
    for key, region, section, vi, en in (
            ("neck_r", "head_neck", HEAD_NECK, "nhóm II cổ phải", "right cervical level II"),
            ("neck_l", "head_neck", HEAD_NECK, "nhóm II cổ trái", "left cervical level II"),
            ("axilla_r", "chest", CHEST, "hố nách phải", "the right axilla"),
            ("axilla_l", "chest", CHEST, "hố nách trái", "the left axilla"),
            ("paratracheal", "chest", CHEST, "trung thất cạnh phải khí quản", "the right paratracheal mediastinum"),
            ("subcarinal", "chest", CHEST, "trung thất dưới carina", "the subcarinal mediastinum"),
            ("paraaortic", "abdomen_pelvis", ABDOMEN_PELVIS, "cạnh động mạch chủ bụng", "the para-aortic region"),
            ("iliac_r", "abdomen_pelvis", ABDOMEN_PELVIS, "dọc bó mạch chậu ngoài phải",
             "along the right external iliac vessels"),
            ("iliac_l", "abdomen_pelvis", ABDOMEN_PELVIS, "dọc bó mạch chậu ngoài trái",
             "along the left external iliac vessels"),
            ("inguinal_r", "abdomen_pelvis", ABDOMEN_PELVIS, "vùng bẹn phải", "the right groin"),
            ("inguinal_l", "abdomen_pelvis", ABDOMEN_PELVIS, "vùng bẹn trái", "the left groin")):
        s["node_" + key] = SiteText(region, section, "node", vi, en)
    s["liver_r"] = SiteText("abdomen_pelvis", ABDOMEN_PELVIS, "liver", "gan phải", "the right hepatic lobe")
    s["liver_l"] = SiteText("abdomen_pelvis", ABDOMEN_PELVIS, "liver", "gan trái", "the left hepatic lobe")
    for k in range(2, 10):
        s[f"bone_D{k}"] = SiteText("chest", MUSCULOSKELETAL, "bone", f"thân đốt sống D{k}", f"the T{k} vertebral body")
    for k in range(1, 6):
        s[f"bone_L{k}"] = SiteText("abdomen_pelvis", MUSCULOSKELETAL, "bone", f"thân đốt sống L{k}",
                                   f"the L{k} vertebral body")
    s["bone_ilium_r"] = SiteText("abdomen_pelvis", MUSCULOSKELETAL, "bone", "xương cánh chậu phải", "the right iliac bone")
    s["bone_ilium_l"] = SiteText("abdomen_pelvis", MUSCULOSKELETAL, "bone", "xương cánh chậu trái", "the left iliac bone")
    return s


SITES = _sites()

# lesion type -> (Vietnamese noun phrase, English noun, impression interpretation vi, en)
TYPES = {
    "Nốt mờ": ("nốt mờ", "nodule", "nghĩ nhiều đến tổn thương ác tính, đề nghị đối chiếu mô bệnh học",
               "suspicious for malignancy; histopathological correlation is advised"),
    "Khối mờ": ("khối mờ", "mass", "nghĩ nhiều đến tổn thương ác tính, đề nghị đối chiếu mô bệnh học",
                "suspicious for malignancy; histopathological correlation is advised"),
    "Hạch": ("hạch", "lymph node", "nghi hạch di căn", "suspicious for nodal metastasis"),
    "Tổn thương giảm tỉ trọng": ("tổn thương giảm tỉ trọng", "hypodense lesion", "nghi tổn thương thứ phát",
                                 "suspicious for a metastasis"),
    "Nang": ("nang", "cyst", "phù hợp nang lành tính", "consistent with a benign cyst"),
    "Tổn thương tiêu xương": ("tổn thương tiêu xương", "lytic lesion", "nghi tổn thương thứ phát xương",
                              "suspicious for a bone metastasis"),
    "Tổn thương đặc xương": ("tổn thương đặc xương", "sclerotic lesion", "nghi tổn thương thứ phát xương",
                             "suspicious for a bone metastasis"),
}


@dataclasses.dataclass(frozen=True)
class LesionFact:
    site: str
    type: str  # a TYPES key (the schema's "Hình dạng" value)
    diameters_mm: tuple[int, int]
    suvmax: Optional[float]  # None: not FDG-avid

    def to_lesion(self) -> Lesion:
        a, b = self.diameters_mm
        avid = self.suvmax is not None
        return Lesion(size=f"{a} x {b} mm", type=self.type, location=SITES[self.site].vi,
                      suvmax=vi_number(self.suvmax) if avid else NONE_VALUE,
                      uptake="Có tăng" if avid else "Không tăng")


def vi_number(v: float) -> str:
    """One decimal with the Vietnamese decimal comma, as the release writes SUVmax ("4,6")."""
    return f"{v:.1f}".replace(".", ",")


def _fdg(fact: LesionFact, lang: str) -> str:
    if fact.suvmax is None:
        return "không tăng chuyển hóa FDG" if lang == "vi" else "without increased FDG uptake"
    if lang == "vi":
        level = "tăng nhẹ chuyển hóa FDG" if fact.suvmax < 3.0 else "tăng chuyển hóa FDG"
        return f"{level} (SUVmax: {vi_number(fact.suvmax)})"
    level = "mildly increased FDG uptake" if fact.suvmax < 3.0 else "increased FDG uptake"
    return f"with {level} (SUVmax {fact.suvmax:.1f})"


_VI_FINDING = ("Hình ảnh {t} ở {loc}, kích thước {size}, {fdg}.",
               "Hình ảnh {t} có kích thước {size} ở {loc}, {fdg}.",
               "Ghi nhận {t} tại {loc}, kích thước {size}, {fdg}.")
_EN_FINDING = ("A {t} in {loc}, measuring {size}, {fdg}.",
               "A {t} measuring {size} in {loc}, {fdg}.",
               "There is a {t} in {loc}, measuring {size}, {fdg}.")


def finding_sentence(fact: LesionFact, lang: str, variant: int) -> str:
    vi_t, en_t, _, _ = TYPES[fact.type]
    a, b = fact.diameters_mm
    site = SITES[fact.site]
    templates = _VI_FINDING if lang == "vi" else _EN_FINDING
    return templates[variant % len(templates)].format(
        t=vi_t if lang == "vi" else en_t, loc=site.vi if lang == "vi" else site.en, size=f"{a} x {b} mm",
        fdg=_fdg(fact, lang))


def impression_sentence(fact: LesionFact, lang: str) -> str:
    vi_t, en_t, vi_i, en_i = TYPES[fact.type]
    a, b = fact.diameters_mm
    site = SITES[fact.site]
    if lang == "vi":
        uptake = "không tăng chuyển hóa FDG" if fact.suvmax is None else "tăng chuyển hóa FDG"
        return f"{vi_t.capitalize()} ở {site.vi}, kích thước {a} x {b} mm, {uptake}: {vi_i}."
    uptake = "without increased FDG uptake" if fact.suvmax is None else "with increased FDG uptake"
    return f"{en_t.capitalize()} in {site.en}, {a} x {b} mm, {uptake}: {en_i}."


# Normal statements (no numbers): (vi, en), chosen when a region has nothing of that kind.
_PHYSIOLOGY = {
    HEAD_NECK: ("Nhu mô não tăng hấp thu FDG theo sinh lý.", "Physiological FDG uptake in the brain."),
    CHEST: ("Cơ tim bắt xạ FDG theo sinh lý.", "Physiological myocardial FDG uptake."),
    ABDOMEN_PELVIS: ("Gan, lách và thận hai bên bắt xạ FDG sinh lý; bàng quang tập trung hoạt độ do FDG đào thải "
                     "qua đường tiết niệu.",
                     "Physiological FDG uptake in the liver, spleen and both kidneys; urinary FDG activity in the "
                     "bladder."),
}
_NORMAL = {
    ("head_neck", "node"): ("Chưa thấy hạch vùng cổ tăng chuyển hóa FDG bất thường.",
                            "No abnormal FDG-avid cervical lymph node."),
    ("chest", "lung"): ("Nhu mô hai phổi chưa ghi nhận nốt, khối tăng chuyển hóa FDG.",
                        "No FDG-avid nodule or mass in either lung."),
    ("chest", "node"): ("Chưa thấy hạch trung thất, hạch nách tăng chuyển hóa FDG.",
                        "No FDG-avid mediastinal or axillary lymph node."),
    ("abdomen_pelvis", "liver"): ("Nhu mô gan chưa thấy tổn thương khu trú.", "No focal liver lesion."),
    ("abdomen_pelvis", "node"): ("Chưa thấy hạch ổ bụng, hạch chậu, hạch bẹn tăng chuyển hóa FDG.",
                                 "No FDG-avid abdominal, iliac or inguinal lymph node."),
}
_EFFUSION = ("Không có dịch khoang màng phổi, màng tim.", "No pleural or pericardial effusion.")
_BONE_NORMAL = ("Hệ xương khớp chưa phát hiện tổn thương tăng chuyển hóa FDG khu trú.",
                "No focal FDG-avid skeletal lesion.")
_CLOSE_WITH = ("Không ghi nhận thêm ổ tăng chuyển hóa FDG bất thường ở các vị trí khác trên PET/CT toàn thân.",
               "No further abnormal FDG-avid focus elsewhere on whole-body PET/CT.")
_CLOSE_WITHOUT = ("Hiện tại chưa ghi nhận tổn thương tăng chuyển hóa FDG bất thường trên PET/CT toàn thân.",
                  "No abnormal FDG-avid lesion on whole-body PET/CT at present.")


def write_reports(facts: Sequence[LesionFact], variants: Sequence[int], phi_header: str = "") -> tuple[Report, Report]:
    """(Vietnamese, English) reports for a study with these lesions; `variants[i]` picks the sentence template
    of lesion i. `phi_header` (synthetic PHI canaries) is prepended to the Vietnamese impression only."""
    out = []
    for lang in ("vi", "en"):
        pick = 0 if lang == "vi" else 1
        sections: dict[str, list[str]] = {s: [] for s in SECTIONS}
        for s, pair in _PHYSIOLOGY.items():
            sections[s].append(pair[pick])
        for fact, var in zip(facts, variants):
            sections[SITES[fact.site].section].append(finding_sentence(fact, lang, var))
        present = {(SITES[f.site].region, SITES[f.site].kind) for f in facts}
        for (region, kind), pair in _NORMAL.items():
            if (region, kind) not in present:
                section = {"head_neck": HEAD_NECK, "chest": CHEST, "abdomen_pelvis": ABDOMEN_PELVIS}[region]
                sections[section].append(pair[pick])
        sections[CHEST].append(_EFFUSION[pick])
        if not any(SITES[f.site].kind == "bone" for f in facts):
            sections[MUSCULOSKELETAL].append(_BONE_NORMAL[pick])
        impression = [impression_sentence(f, lang) for f in facts]
        impression.append((_CLOSE_WITH if facts else _CLOSE_WITHOUT)[pick])
        if phi_header and lang == "vi":
            impression.insert(0, phi_header)
        out.append(Report(impression=" ".join(impression), findings={s: " ".join(v) for s, v in sections.items()}))
    return out[0], out[1]
