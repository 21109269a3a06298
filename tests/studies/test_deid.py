"""Pseudonyms and free-text scrubbing: PHI goes, clinical content (checked on real ViMed-PET reports) stays."""
import difflib
import hashlib
import hmac
import json
import unicodedata

import pytest

from jaxpetct.studies.deid import fold, pseudonymize, scrub_text


def test_pseudonym_is_salted_hmac_sha256_stable_and_short():
    uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    expected = hmac.new(b"site-salt", uid.encode(), hashlib.sha256).hexdigest()[:16]
    assert pseudonymize(uid, "site-salt") == expected
    assert pseudonymize(uid + " ", "site-salt") == expected  # DICOM pads UIDs
    assert pseudonymize(uid, "other-salt") != expected
    assert pseudonymize(uid[:-1] + "1", "site-salt") != expected
    assert len(expected) == 16 and int(expected, 16) >= 0
    with pytest.raises(ValueError):
        pseudonymize(uid, "")


PHI_CASES = [
    ("Bệnh nhân Nguyễn Văn Hùng, 56 tuổi.", "Nguyễn Văn Hùng"),
    ("BN: Trần Thị Bình đến khám.", "Trần Thị Bình"),
    ("Ông LÊ VĂN TÁM tái khám", "LÊ VĂN TÁM"),
    ("Bác sĩ đọc: BS. Phạm Minh Châu", "Phạm Minh Châu"),
    ("Họ tên: Hoa", "Hoa"),
    ("Mã BN: 2019012345", "2019012345"),
    ("PID 88812", "88812"),
    ("Patient ID: AB-7781", "AB-7781"),
    ("chụp ngày 12 tháng 3 năm 2019", "12 tháng 3 năm 2019"),
    ("ngày 12/03/2019", "12/03/2019"),
    ("on 2019-03-12 at", "2019-03-12"),
    ("ngày 5/7 tái khám", "5/7"),
    ("sinh năm 1965", "1965"),
    ("SĐT: 0912 345 678", "0912 345 678"),
    ("gọi 0912.345.678 hoặc +84 24 3869 3731", "0912.345.678"),
    ("gọi 0912.345.678 hoặc +84 24 3869 3731", "3869 3731"),
    ("Địa chỉ: số 12 ngõ 34 phố Huế, Hà Nội. Hình ảnh", "ngõ 34 phố Huế"),
    ("nhà ở phường Dịch Vọng, quận Cầu Giấy", "Dịch Vọng"),
    ("chuyển từ Bệnh viện Bạch Mai", "Bạch Mai"),
    ("email a.b@benhvien.vn", "a.b@benhvien.vn"),
    ("accession 1.2.840.10008.5.1", "1.2.840.10008.5.1"),
]


@pytest.mark.parametrize("text,phi", PHI_CASES)
def test_patterns_remove_phi(text, phi):
    out = scrub_text(text)
    assert phi not in out, out
    assert "[" in out  # replaced by a tag, not silently dropped


CLINICAL = [
    "Hình ảnh giảm tỉ trọng, kích thước 12 x 14 mm, không tăng chuyển hóa FDG ở gan trái.",
    "Hình ảnh hạch rốn phổi hai bên, tăng chuyển hóa FDG (SUVmax: 4,6).",
    "Tổn thương tiêu xương ở đốt sống L4, L5-S1, D12 và C1.",
    "Hạch nhóm IIB hai bên, hạch 4R, 2R.",
    "Khối ở 1/3 trên thực quản, so với hình ảnh PET/CT 5/2017 và tháng 6/2019.",
    "Bệnh nhân K phổi sau điều trị. BN K vú.",
    "Tăng chuyển hóa FDG ở gạch nước bọt (IDH-1), kích thước 8 mm, SUVmax 3.8 và 10,1.",
    "Bệnh nhân nam, 45 tuổi, xương sườn số 5 bên phải.",
]


@pytest.mark.parametrize("text", CLINICAL)
def test_clinical_text_is_kept(text):
    assert scrub_text(text) == text


def test_known_values_match_without_case_accents_or_separators():
    known = ["NGUYEN^VAN^HUNG", "PID-0042", "19650312", "Benh vien Canary"]
    text = ("Bệnh nhân nguyễn văn hùng (NGUYEN_VAN_HUNG), mã PID-0042, sinh 12/03/1965 hay 1965-03-12, "
            "khám tại Bệnh viện Canary. Kích thước 12 x 14 mm.")
    out = scrub_text(text, known)
    folded = fold(out)
    for needle in ("nguyen", "hung", "pid-0042", "0042", "12/03/1965", "1965-03-12", "canary"):
        assert needle not in folded, (needle, out)
    assert "Kích thước 12 x 14 mm." in out


def test_short_known_values_are_ignored():
    """Values under 3 letters/digits (sex "M", a PatientID "10") would erase ordinary text; they are not matched."""
    assert scrub_text("Hạch 10 mm ở L4, nhóm IIB.", ["10", "M", "L4"]) == "Hạch 10 mm ở L4, nhóm IIB."


def test_output_is_nfc():
    decomposed = unicodedata.normalize("NFD", "Hình ảnh bắt xạ theo đặc điểm sinh lý ở não.")
    assert scrub_text(decomposed) == unicodedata.normalize("NFC", decomposed)


def _jsonl(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _real_texts(root):
    texts = [row["report"] for row in _jsonl(root / "reports.jsonl")]
    texts += [t for row in _jsonl(root / "vqa.jsonl") for t in (row["question"], row["answer"])]
    texts += [t for row in _jsonl(root / "generated_reports_reproduction.jsonl")
              for t in (row["generated"], row["reference"])]
    texts += [json.dumps(row, ensure_ascii=False) for row in _jsonl(root / "report_lesions_llm_extracted.jsonl")]
    texts += [p.read_text(encoding="utf-8") for p in sorted((root / "expert_lesions").glob("*.json"))]
    return texts


def test_real_reports_clinical_text_unchanged(realdata):
    """Every real report, VQA pair, generated report and expert lesion file passes the scrubber unchanged."""
    texts = _real_texts(realdata)
    changed = []
    for text in texts:
        want = unicodedata.normalize("NFC", text)
        got = scrub_text(text)
        if got != want:
            ops = difflib.SequenceMatcher(None, want, got).get_opcodes()
            changed += [(want[max(0, a - 30):b + 30], got[c:d]) for tag, a, b, c, d in ops if tag != "equal"]
    print(f"scrubbed {len(texts)} real texts ({sum(map(len, texts))} characters): {len(changed)} changes")
    assert len(texts) > 500
    assert changed == []


def test_one_salt_rule_for_every_entry_point(tiny_cohort, tmp_path, monkeypatch):
    """explicit > $JAXPETCT_SALT > (synthetic cohorts only) the demo salt; real data without a secret is refused."""
    from jaxpetct.errors import UserError
    from jaxpetct.studies.deid import DEMO_SALT, SALT_ENV, SaltError, is_synthetic_cohort, resolve_salt

    monkeypatch.delenv(SALT_ENV, raising=False)
    assert is_synthetic_cohort(tiny_cohort) and is_synthetic_cohort(tiny_cohort / "PETCT2017")  # inside one too
    assert not is_synthetic_cohort(tmp_path)
    assert resolve_salt(None, synthetic=True) == DEMO_SALT
    assert resolve_salt("mine", synthetic=True) == "mine"
    for salt in (None, "", DEMO_SALT):
        with pytest.raises(SaltError, match="JAXPETCT_SALT") as e:
            resolve_salt(salt, synthetic=False)
        assert isinstance(e.value, UserError)
    monkeypatch.setenv(SALT_ENV, "from-env")
    assert resolve_salt(None, synthetic=False) == "from-env" and resolve_salt(None, synthetic=True) == "from-env"
    assert resolve_salt("flag", synthetic=False) == "flag"  # a flag or config value wins over the environment


def test_real_data_builds_need_a_salt(tmp_path, monkeypatch, capsys):
    """`python -m jaxpetct.data build` on a folder that is not a synthetic cohort, without a salt: one line, exit 2,
    before any study is read."""
    from jaxpetct.data.__main__ import main

    monkeypatch.delenv("JAXPETCT_SALT", raising=False)
    (tmp_path / "dicom").mkdir()
    (tmp_path / "dicom" / "notes.txt").write_text("a hospital export")
    assert main(["build", "--manual-dir", str(tmp_path / "dicom"), "--data-dir", str(tmp_path / "tfds"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "JAXPETCT_SALT" in err[0], err
