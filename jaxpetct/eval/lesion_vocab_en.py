"""The English half of the lesion vocabulary: the same 13 types + other and 6 location groups + other as the
Vietnamese tables (`lesion_vocab`), for the release's English translations (reports_en) and what a model trained
on them writes. `lesion_vocab` merges these fragments into its tables, so `type_category` and `location_group` —
and with them clinical F1 — read a lesion the same way in either language. English words do not occur in the
Vietnamese reports (and Vietnamese ones not in English), so one table serves both.
"""
from __future__ import annotations

NODE = (r"lymph nodes?", r"nodes?", "nodal", "adenopathy", "lymphadenopathy")
SPECIFIC_TYPES: dict[str, tuple[str, ...]] = {
    "nodule": (r"nodules?", "nodular"),
    "mass": (r"mass(?:es)?", r"tumou?rs?"),
    "thickening": (r"(?:wall |mucosal |pleural )?thickening",),
    "cyst": (r"cysts?", "cystic"),
    "calcification": (r"calcifications?", "calcified"),
    "effusion": (r"effusions?", "pneumothorax", "ascites", r"fluid collections?"),
    "bone_lesion": (r"(?:osteo)?lytic lesions?", r"sclerotic lesions?", r"osteoblastic lesions?", r"fractures?",
                    r"bone lesions?", r"bone metastas[ie]s"),
    "lung_opacity": (r"ground[- ]glass(?: opacit(?:y|ies))?", "consolidation", r"opacit(?:y|ies)", "fibrosis",
                     "atelectasis", r"cavit(?:y|ies)", r"tree[- ]in[- ]bud"),
    "stone": (r"stones?", r"calcul(?:us|i)"),
    "enlargement": ("enlarged", "enlargement", "hypertrophy", r"dilat(?:ed|ation)", "atrophy"),
    "lesion": (r"hypodense lesions?", r"hyperdense lesions?", r"soft[- ]tissue density"),
}
GENERIC_LESION = (r"lesions?",)
FDG_FOCUS = (r"(?:focal |increased )?fdg uptake", r"fdg[- ]avid focus", "hypermetabolic", r"focal uptake")
LOCATIONS: dict[str, tuple[str, ...]] = {
    "head_neck": ("brain", "skull", r"sinus(?:es)?", "nasopharynx", "oropharynx", "hypopharynx", "pharynx",
                  "larynx", r"tonsils?", "tongue", "parotid", "submandibular", "salivary", "thyroid", "neck",
                  "cervical", "supraclavicular", r"level (?:i{1,3}|iv|vi?)[ab]?"),
    "thorax": (r"lungs?", r"lobes?", "lingula", "pleura", "pleural", r"breasts?", r"axillae?", "axillary",
               "chest wall"),
    "mediastinum": ("mediastinum", "mediastinal", r"hil(?:um|a|ar)", "carina", "subcarinal", "paratracheal",
                    "trachea", r"bronch(?:us|i)", "aortic arch", "heart", "myocardial", "pericardium", "pericardial",
                    r"o?esophag(?:us|eal)", "thymus"),
    "abdomen": ("liver", "hepatic", "gallbladder", "biliary", "spleen", "splenic", "pancreas", "pancreatic",
                "stomach", "gastric", "bowel", "colon", r"kidneys?", "renal", r"adrenals?", "peritoneum",
                "peritoneal", "mesentery", "mesenteric", "retroperitoneum", "retroperitoneal", "para-aortic",
                "abdominal", "abdomen"),
    "pelvis": ("pelvis", "pelvic", "iliac", "inguinal", "groin", "bladder", "uterus", "cervix", r"ovar(?:y|ies)",
               "prostate", r"test(?:is|es)", "rectum", "rectal", "sigmoid", "anus"),
    "musculoskeletal": ("bone", "bones", r"vertebral bod(?:y|ies)", r"vertebra[e]?", "spine", r"ribs?", "sternum",
                        "clavicle", "scapula", "iliac bone", "acetabulum", r"joints?", r"muscles?", "soft tissue",
                        "marrow", "skeletal"),
}
