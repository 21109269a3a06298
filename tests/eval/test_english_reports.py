"""English reports: the English lesion extractor against the synthetic cohort's truth, the WMT tokenisation against
sacrebleu's, English instructions, and a config that mixes English with Vietnamese-only data is refused."""
import json

import pytest
import sacrebleu
from sacrebleu.tokenizers.tokenizer_13a import Tokenizer13a

from jaxpetct.eval.clinical import categorize, clinical_f1
from jaxpetct.eval.lesions_en import extract_lesions_en, extractor_for
from jaxpetct.eval.metrics import compute_text_metrics
from jaxpetct.studies import cohort, synthetic
from jaxpetct.text.english import tokenize_13a
from jaxpetct.text.lesion import Lesion
from jaxpetct.text.prompts import report_instruction


@pytest.fixture(scope="module")
def english_cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("en") / "c"
    synthetic.write_cohort(str(root), n=24, seed=2)
    truth = {json.loads(line)["key"]: json.loads(line) for line in (root / synthetic.TRUTH).read_text("utf-8").splitlines()}
    out = []
    for ref in cohort.list_studies(str(root)):
        study = cohort.load_study(ref, salt="en")
        out.append((study, [Lesion.from_json(x["lesion"]) for x in truth[ref.key]["lesions"]]))
    return out


def test_english_extractor_finds_the_synthetic_truth(english_cohort):
    """The English reports name every truth lesion (Vietnamese schema) with the same type, place and FDG category."""
    got = [extract_lesions_en(s.report_en.full_text()) for s, _ in english_cohort]
    truth = [t for _, t in english_cohort]
    f1 = clinical_f1(got, truth)
    print("\nEnglish extractor vs truth: " + ", ".join(f"{k} {f1[k]:.1f}" for k in ("F1-T", "F1-TP", "F1-TF", "F1-TPF")))
    assert all(f1[k] == 100.0 for k in ("F1-T", "F1-TP", "F1-TF", "F1-TPF")) and sum(map(len, truth)) >= 30
    vi = [extractor_for("vi")(s.report.full_text()) for s, _ in english_cohort]
    keys = lambda lesions: sorted(map(str, map(categorize, lesions)))  # noqa: E731
    assert [keys(a) for a in vi] == [keys(b) for b in got]  # both languages agree


@pytest.mark.parametrize("text,expected", [
    ("No FDG-avid nodule or mass in either lung.", []),
    ("Physiological FDG uptake in the brain.", []),
    ("A cyst in the right hepatic lobe, measuring 12 x 10 mm, without increased FDG uptake.",
     [("cyst", "abdomen", False, "12 x 10 mm", "Không có")]),
    ("There is a lymph node in the right axilla, measuring 15 x 12 mm, with mildly increased FDG uptake "
     "(SUVmax 2.8).", [("lymph_node", "thorax", True, "15 x 12 mm", "2.8")]),
    ("A nodule in the left upper lobe, 20 x 18 mm, with increased FDG uptake (SUVmax 7.1). Nodule in the left "
     "upper lobe, 20 x 18 mm, with increased FDG uptake: suspicious for malignancy.",
     [("nodule", "thorax", True, "20 x 18 mm", "7.1")]),  # the impression's repeat is merged
])
def test_english_sentences(text, expected):
    got = [(categorize(les).type, categorize(les).location, categorize(les).fdg, les.size, les.suvmax)
           for les in extract_lesions_en(text)]
    assert got == expected


def test_wmt_tokens_equal_sacrebleu_13a_and_bleu_agrees(english_cohort):
    refs = [s.report_en.full_text() for s, _ in english_cohort]
    hyps = refs[1:] + refs[:1]
    sb = Tokenizer13a()
    assert all(tokenize_13a(t) == sb(t).lower().split() for t in refs)
    ours = compute_text_metrics(hyps, refs, language="en")["bleu4"]
    theirs = sacrebleu.corpus_bleu(hyps, [refs], tokenize="13a", lowercase=True).score
    assert ours == pytest.approx(theirs, abs=1e-6)


def test_english_instructions_and_language_checks():
    assert report_instruction("chest", language="en") == "Describe the PET/CT findings of the chest for this patient."
    assert report_instruction(None, language="en").startswith("Describe the whole-body PET/CT")
    from jaxpetct.config import base_config
    from jaxpetct.errors import ConfigError
    from jaxpetct.jobs import resolve_config

    cfg = base_config()
    cfg.data.report_language = "en"
    assert resolve_config(cfg).data.report_language == "en"
    cfg.eval.tasks = ("report", "vqa")
    with pytest.raises(ConfigError, match="report generation only"):
        resolve_config(cfg)
    cfg.eval.tasks, cfg.data.report_language = ("report",), "fr"
    with pytest.raises(ConfigError, match="use 'vi' or 'en'"):
        resolve_config(cfg)
