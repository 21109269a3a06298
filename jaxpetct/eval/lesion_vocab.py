"""Vietnamese PET/CT vocabulary: lesion types, location groups and FDG uptake, mapped to clinical-F1 categories.

The paper maps free-text lesions to ≈13 types + other, ≈5 location groups + other and FDG yes/no before
matching, but does not publish the tables. These are ours, learnt from the release's reports and its expert
lesion files, and fixed here so every number is reproducible.

Lesion types (13 + "other"), decided by the *head* of the type text:
  lymph_node      hạch (wins over everything: "khối hạch", "hạch có vôi hoá" are nodes)
  nodule          nốt, nhân (thyroid "nhân giáp"; not "nhân tạo")
  mass            khối, u
  thickening      dày thành / niêm mạc / màng phổi / phúc mạc ... (not "dạ dày", not "dày kẽ")
  cyst            nang, kén
  calcification   vôi hoá
  effusion        tràn dịch, dịch tự do, tỉ trọng dịch, tràn khí (fluid or air collection)
  bone_lesion     huỷ xương, tiêu xương, đặc xương, chồi xương, gãy xương, tăng đậm độ xương, tổn thương xương
  lung_opacity    kính mờ, đông đặc, dải mờ, đám mờ, dày kẽ / tổ chức kẽ, nụ cành, chồi cây, xơ hoá, xẹp phổi, hang
  stone           sỏi
  enlargement     kích thước lớn, to, phì đại, giãn, teo (organ size change)
  lesion          a lesion with no finer head: tổn thương, giảm / đồng tỉ trọng, tỉ trọng mô mềm / tổ chức / hỗn hợp
  fdg_focus       only an uptake is described: tăng chuyển hoá / hấp thu FDG
  other           none of the above (e.g. "Không có", an organ name alone)
Rule: "hạch" anywhere -> lymph_node; else the left-most specific keyword (ties: the longer); else the generic
"lesion" words; else fdg_focus; else other.

Location groups (6 + "other"), from the location text (left-most keyword; at one position the longer wins,
so "rốn phổi" beats "phổi", "cánh chậu" beats "chậu", "động mạch chủ bụng" beats "động mạch chủ"):
  head_neck        brain, skull base, sinuses, naso/oro/hypopharynx, larynx, tonsils, tongue, salivary glands,
                   thyroid, neck node levels I-VI, supraclavicular fossa
  thorax           lungs and pleura (lobes, segments, fissures), breast, axilla, chest wall
  mediastinum      mediastinum and hila: nodal stations 1-14, trachea, carina, bronchi, aortic arch, heart,
                   pericardium, oesophagus, thymus
  abdomen          liver, gallbladder, bile ducts, spleen, pancreas, stomach, bowel and colon (not sigmoid),
                   kidneys, adrenals, peritoneum, mesentery, retroperitoneum, abdominal aorta / IVC, crura
  pelvis           pelvis minor, iliac and inguinal regions, bladder, uterus, ovaries, prostate, testes,
                   rectum, sigmoid, anus
  musculoskeletal  bones (vertebrae, ribs, sternum, clavicle, scapula, pelvis bones, mandible), joints,
                   muscles, soft tissue, bone marrow
FDG uptake: positive when the uptake text says so (tăng, cao, có tăng, tăng nhẹ, không đều ...); negative when
it negates (không tăng, giảm, bình thường); when it says nothing ("Không có", empty) a SUVmax > 0 decides.
"""
from __future__ import annotations

import functools
import re

from jaxpetct.text.vietnamese import normalize_for_matching

OTHER = "other"
TYPE_CATEGORIES = (
    "lymph_node", "nodule", "mass", "thickening", "cyst", "calcification", "effusion", "bone_lesion",
    "lung_opacity", "stone", "enlargement", "lesion", "fdg_focus", OTHER,
)
LOCATION_GROUPS = ("head_neck", "thorax", "mediastinum", "abdomen", "pelvis", "musculoskeletal", OTHER)

_T = "t[ỉỷ] trọng"
# Specific lesion heads (regex fragments on normalised text: lower case, NFC, new-style tones "hoá").
_SPECIFIC_TYPES: dict[str, tuple[str, ...]] = {
    "nodule": ("nốt", r"nhân(?! tạo)"),
    "mass": ("khối", "u"),
    "thickening": (r"(?<!dạ )dày(?! tổ chức kẽ)(?! kẽ)", "dày thành", "dày niêm mạc"),
    "cyst": ("nang", "kén"),
    "calcification": ("vôi hoá",),
    "effusion": ("tràn dịch", "dịch tự do", "tràn khí", f"{_T} dịch"),
    "bone_lesion": ("huỷ xương", "hủy xương", "tiêu xương", "đặc xương", "chồi xương", "gãy xương", "tăng đậm độ xương",
                    "tổn thương xương", "xẹp đốt sống"),
    "lung_opacity": ("kính mờ", "mờ kính", "đông đặc", "dải mờ", "dải mở", "đám mờ", "dày kẽ", "dày tổ chức kẽ",
                     "tổ chức kẽ", "nụ cành", "chồi cây", "xơ hoá", "xẹp phổi", "hang"),
    "stone": ("sỏi",),
    "enlargement": ("kích thước lớn", "kích thước to", "phì đại", "giãn", "teo"),
    "lesion": ("giảm " + _T, "đồng " + _T, f"{_T} mô mềm", f"{_T} tổ chức", f"{_T} hỗn hợp"),
}
_GENERIC_LESION = ("tổn thương",)
_FDG_FOCUS = (r"tăng(?: nhẹ)? chuyển hoá", "tăng hấp thu", "bắt xạ")
_NODE = ("hạch",)

_LOCATIONS: dict[str, tuple[str, ...]] = {
    "head_neck": (
        "não", "sọ", "thái dương", "vùng đỉnh", "đỉnh thái dương", "trán", "chẩm", "thể chai", "tiểu não",
        "hốc mắt", "mắt", "mũi", "cuộn mũi", "xoang", "xoang hàm", "xoang sàng", "xoang lê", "vòm họng",
        "hầu", "họng", "hạ họng", "hầu họng", "thanh quản", "thanh môn", "dây thanh", "amydal", "amidan",
        "amygdala", "lưỡi", "rìa lưỡi", "khẩu cái", "miệng", "góc hàm", "dưới hàm", "hàm", "tuyến nước bọt",
        "mang tai", "cổ", "nền cổ", "ức đòn chũm", "úc đòn chũm", "cơ ức đòn chũm", "cơ úc đòn chũm", "thượng đòn", "tuyến giáp", "giường tuyến giáp",
        "giáp", "rosenmuller", "rossenmuller", "rossenmuler", "dốc nền", r"nhóm (?:i{1,3}|iv|vi?)[ab]?",
    ),
    "thorax": (
        "phổi", "hai phổi", "nhu mô phổi", "màng phổi", "khoang màng phổi", "thuỳ trên", "thuỳ dưới",
        "thuỳ giữa", "thuỳ lưỡi", "phân thuỳ lưỡi", "rãnh liên thuỳ", "nền phổi", "đỉnh phổi", "trường phổi",
        "vú", "tuyến vú", "nách", "hố nách", "thành ngực", "hạ đòn",
    ),
    "mediastinum": (
        "trung thất", "rốn phổi", "carina", "khí quản", "phế quản", "phế quản gốc", "quai động mạch chủ",
        "động mạch chủ", "cửa sổ chủ phổi", "cửa sổ chủ - phổi", "trước mạch máu", "động mạch phổi", "tim",
        "màng tim", "màng ngoài tim", "thực quản", "tuyến ức", r"nhóm \d+[rl]?",
    ),
    "abdomen": (
        "gan", "túi mật", "đường mật", "lách", "tuỵ", "tụy", "tá tuỵ", "tá tụy", "đầu tuỵ", "đầu tụy", "dạ dày",
        "tâm vị", "bờ cong nhỏ", "bờ cong lớn", "thận", "thượng thận", "đài bể thận", "niệu quản", "ổ bụng",
        "phúc mạc", "sau phúc mạc", "mạc treo", "ruột", "tiểu tràng", "hỗng tràng", "hồi tràng", "tá tràng",
        "đại tràng", "khung đại tràng", "manh tràng", "góc gan", "góc lách", "động mạch chủ bụng",
        "tĩnh mạch chủ bụng", "động tĩnh mạch chủ bụng", "chân hoành", "rốn gan", "hậu môn nhân tạo",
        "thành bụng", "hạ vị", "thượng vị", "miệng nối",
    ),
    "pelvis": (
        "tiểu khung", "khung chậu", "chậu", "hố chậu", "bàng quang", "tử cung", "cổ tử cung", "buồng tử cung", "buồng trứng",
        "phần phụ", "tiền liệt tuyến", "túi tinh", "tinh hoàn", "âm đạo", "trực tràng", "hậu môn",
        "đại tràng sigma", "bẹn", "hố bẹn",
    ),
    "musculoskeletal": (
        "xương", "đốt sống", "thân đốt sống", "cột sống", "cuống sống", "sườn", "xương sườn", "xương ức",
        "cán xương ức", "xương đòn", "bả vai", "cánh chậu", "xương chậu", "ổ cối", "trần ổ cối", "khớp", "vai",
        "cơ", "phần mềm", "tuỷ xương", "tủy xương", "xương hàm",
    ),
}


def _compile(fragments) -> list[re.Pattern]:
    out = []
    for frag in fragments:
        frag = normalize_for_matching(frag) if frag.replace(" ", "").isalpha() else frag
        out.append(re.compile(rf"(?<!\w){frag}(?!\w)"))
    return out


@functools.lru_cache(maxsize=1)
def _tables():
    """Vietnamese and English fragments in one table per kind (lesion_vocab_en: the words never cross languages)."""
    from jaxpetct.eval import lesion_vocab_en as en

    def pairs(*tables):
        return [(key, pat) for table in tables for key, frags in table.items() for pat in _compile(frags)]

    return {
        "node": _compile(_NODE + en.NODE),
        "specific": pairs(_SPECIFIC_TYPES, en.SPECIFIC_TYPES),
        "generic": _compile(_GENERIC_LESION + en.GENERIC_LESION),
        "fdg": _compile(_FDG_FOCUS + en.FDG_FOCUS),
        "locations": pairs(_LOCATIONS, en.LOCATIONS),
    }


def _leftmost(text: str, table) -> tuple[str, int, int] | None:
    """(label, start, end) of the left-most match; at equal starts the longer match wins."""
    best = None
    for label, pat in table:
        m = pat.search(text)
        if m and (best is None or (m.start(), -(m.end() - m.start())) < (best[1], -(best[2] - best[1]))):
            best = (label, m.start(), m.end())
    return best


def find_type_head(text: str) -> tuple[str, int, int] | None:
    """(category, start, end) of the lesion head in normalised text, or None when it names no lesion."""
    t = _tables()
    return (
        _leftmost(text, [("lymph_node", p) for p in t["node"]])
        or _leftmost(text, t["specific"])
        or _leftmost(text, [("lesion", p) for p in t["generic"]])
        or _leftmost(text, [("fdg_focus", p) for p in t["fdg"]])
    )


def type_category(type_text: str) -> str:
    """One of TYPE_CATEGORIES for a lesion's free-text type ("Hình ảnh nốt mờ kính" -> "nodule")."""
    hit = find_type_head(normalize_for_matching(type_text or ""))
    return hit[0] if hit else OTHER


def find_location(text: str) -> tuple[str, int, int] | None:
    """(group, start, end) of the left-most anatomical keyword in normalised text, or None."""
    return _leftmost(text, _tables()["locations"])


def location_group(location_text: str) -> str:
    """One of LOCATION_GROUPS for a lesion's free-text location ("rốn phổi trái" -> "mediastinum")."""
    hit = find_location(normalize_for_matching(location_text or ""))
    return hit[0] if hit else OTHER


_NEGATIVE_UPTAKE = re.compile(r"^(khong tang|khong|giam|binh thuong|thap|am tinh)\b")
_EMPTY_UPTAKE = {"", "khong co", "none", "null", "n/a", "khong ro", "-"}
_POSITIVE_UPTAKE = re.compile(r"\b(tang|cao|co tang|nhe|khong deu|manh|duong tinh|co)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)?")


def parse_suv(value) -> float | None:
    """First number in a SUVmax value (3, "3,7", "10 và 8.7"), or None when there is none."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    m = _NUMBER.search(str(value or ""))
    return float(m.group().replace(",", ".")) if m else None


def fdg_positive(uptake, suvmax=None) -> bool:
    """FDG uptake yes/no from the uptake text, falling back to SUVmax > 0 when the text says nothing."""
    u = normalize_for_matching(str(uptake if uptake is not None else ""), fold=True)
    if u not in _EMPTY_UPTAKE:
        if _NEGATIVE_UPTAKE.match(u) and not u.startswith("khong deu"):
            return False
        if _POSITIVE_UPTAKE.search(u):
            return True
    suv = parse_suv(suvmax)
    return suv is not None and suv > 0
