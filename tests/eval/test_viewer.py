"""Study viewer: PNG encoder checked by Pillow, image geometry, and pages rendered in headless Chromium with the
images decoded (naturalWidth > 0, non-blank pixels where they sit in a screenshot) and both reports visible."""
import json
import re
import shutil
import subprocess

import numpy as np
import pytest

from jaxpetct.eval.png import encode_png
from jaxpetct.eval.viewer import StudyPage, ct_slices, pages_from_predictions, pet_mip, write_viewer
from tests.eval.synthetic_eval import cohort_studies

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)
GENERATED = "Hạch trung thất kích thước 12 x 10 mm, tăng chuyển hoá FDG (SUVmax: 5,2). Gan không to."
PROBE = """<script>window.addEventListener('load', function () {
  function box(e) { var b = e.getBoundingClientRect(); return {x: b.left + scrollX, y: b.top + scrollY, w: b.width,
                                                                 h: b.height}; }
  var out = {images: [], reports: []};
  document.querySelectorAll('img').forEach(function (i) {
    out.images.push(Object.assign({id: i.id, complete: i.complete, nw: i.naturalWidth, nh: i.naturalHeight}, box(i)));
  });
  document.querySelectorAll('td.report-generated, td.report-reference').forEach(function (t) {
    var s = getComputedStyle(t);
    out.reports.push(Object.assign({cls: t.className, text: t.innerText, visible: s.visibility === 'visible' &&
                                    s.display !== 'none'}, box(t)));
  });
  var pre = document.createElement('pre'); pre.id = 'probe'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});</script>"""


def test_png_encoder_round_trips_through_pillow():
    Image = pytest.importorskip("PIL.Image")
    import io

    rng = np.random.default_rng(0)
    for img in (rng.integers(0, 256, (7, 13), dtype=np.uint8), rng.integers(0, 256, (5, 3, 3), dtype=np.uint8)):
        decoded = np.asarray(Image.open(io.BytesIO(encode_png(img))))
        np.testing.assert_array_equal(decoded, img)
    with pytest.raises(ValueError, match="uint8"):
        encode_png(np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((2, 2, 4), np.uint8))


def test_mip_and_slices_keep_geometry_orientation_and_windows():
    pet = np.zeros((40, 20, 30), np.float32)
    pet[5, 7, 24] = 8.0  # a hot voxel near the head, on the image's right
    mip = pet_mip(pet, (4.0, 2.0, 2.0))
    assert mip.shape == (512, 192)  # 160 x 60 mm at square pixels, longest side 512
    r, c = np.unravel_index(np.argmin(mip), mip.shape)
    assert mip.min() == round(255 * (1 - 0.8)) and abs(r / 512 - 5.5 / 40) < 0.02 and abs(c / 192 - 24.5 / 30) < 0.02
    r2, _ = np.unravel_index(np.argmin(pet_mip(pet, (4.0, 2.0, 2.0), head_first=False)), mip.shape)
    assert abs(r2 / 512 - (40 - 5.5) / 40) < 0.02  # feet-first volumes are flipped so the head stays on top
    ct = np.full((10, 8, 8), -1000.0, np.float32)
    ct[5] = 40.0
    (k, img), = ct_slices(ct, (5.0, 1.0, 1.0), fractions=(0.5,))
    assert k == 5 and img.shape == (512, 512) and np.all(img == 128)  # level 40 is mid-grey
    assert np.all(ct_slices(ct, (5.0, 1.0, 1.0), fractions=(0.1,))[0][1] == 0)  # air is black


@pytest.fixture(scope="module")
def viewer_dir(tmp_path_factory):
    studies = cohort_studies(tmp_path_factory.mktemp("cohort") / "root", n=2)
    records = []
    for s in studies:
        records.append({"task": "report", "study_id": s.study_id, "region": "chest", "generated": "Nốt mờ thuỳ trên.",
                        "reference": s.report.findings["Lồng ngực"]})
        records.append({"task": "report", "study_id": s.study_id, "region": "study", "generated": GENERATED,
                        "reference": s.report.full_text()})
    records.append({"task": "vqa", "study_id": studies[0].study_id, "generated": "x", "reference": "y"})
    out = tmp_path_factory.mktemp("viewer")
    pages = pages_from_predictions(records, studies)
    bad = StudyPage("PETCT2017/THANG 8/day_1_patient_0", pages[0].pet, pages[0].ct, {}, {})
    summary = write_viewer([*pages, bad], out)
    return out, studies, summary


def test_pages_index_and_privacy(viewer_dir):
    out, studies, summary = viewer_dir
    assert [e["study_id"] for e in summary["pages"]] == [s.study_id for s in studies]
    assert summary["skipped"] == [{"study_id": "-", "reason": "study id is not a pseudonym"}]
    index = (out / "index.html").read_text(encoding="utf-8")
    for s in studies:
        assert f'href="{s.study_id}.html"' in index
    page = (out / f"{studies[0].study_id}.html").read_text(encoding="utf-8")
    # whole study first, then the region; the reference lesion table is non-empty
    assert page.index("study: toàn thân") < page.index("chest: vùng ngực")
    ref_table = page.split('id="lesions-reference"')[1].split("</table>")[0]
    assert ref_table.count("<tr>") >= 2 and summary["pages"][0]["reference_lesions"] >= 1
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4
    everything = "".join(p.read_text(encoding="utf-8") for p in out.glob("*.html"))
    assert "patient_" not in everything and "THANG" not in everything


def _chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", "--window-size=1400,1800", *args],
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (apt-get install -y chromium)")
def test_pages_render_in_headless_chromium(viewer_dir, tmp_path):
    Image = pytest.importorskip("PIL.Image")
    out, studies, _ = viewer_dir
    page = out / f"{studies[0].study_id}.html"
    probed = tmp_path / "probed.html"  # the page plus a script that reports what the browser decoded and laid out
    probed.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = _chromium("--virtual-time-budget=5000", "--dump-dom", probed.as_uri())
    match = re.search(r'<pre id="probe">(.*?)</pre>', dom.stdout, re.S)
    assert match, f"no probe output; chromium said: {dom.stderr[-2000:]}"
    probe = json.loads(match.group(1).replace("&quot;", '"').replace("&amp;", "&").replace("&lt;", "<")
                       .replace("&gt;", ">"))
    assert [i["id"] for i in probe["images"]] == ["pet-mip", "ct-slice-0", "ct-slice-1", "ct-slice-2"]
    for img in probe["images"]:
        assert img["complete"] and img["nw"] > 0 and img["nh"] > 0 and img["w"] > 50 and img["h"] > 50, img
    gen = [r for r in probe["reports"] if r["cls"] == "report-generated"]
    ref = [r for r in probe["reports"] if r["cls"] == "report-reference"]
    assert GENERATED in [r["text"].strip() for r in gen]
    assert studies[0].report.full_text() in [r["text"].strip() for r in ref]
    for r in gen + ref:
        assert r["visible"] and r["w"] > 100 and r["h"] > 10, r

    shot = tmp_path / "shot.png"
    done = _chromium(f"--screenshot={shot}", page.as_uri())
    assert shot.is_file(), done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("L"), np.float32)
    on_screen = [i for i in probe["images"] if i["y"] + i["h"] <= pixels.shape[0]]
    assert [i["id"] for i in on_screen][:2] == ["pet-mip", "ct-slice-0"]
    for img in on_screen:
        crop = pixels[int(img["y"]) + 2: int(img["y"] + img["h"]) - 2, int(img["x"]) + 2: int(img["x"] + img["w"]) - 2]
        assert crop.std() > 20 and np.ptp(crop) > 100, (img["id"], crop.std())  # a decoded image, not a blank box
    for r in gen[:1] + ref[:1]:  # text glyphs: dark pixels inside the report cells
        cell = pixels[int(r["y"]) + 3: int(r["y"] + r["h"]) - 3, int(r["x"]) + 3: int(r["x"] + r["w"]) - 3]
        assert (cell < 100).mean() > 0.01, r["cls"]
    assert pixels[5:40, 900:1300].std() < 1.0  # and the page background is blank where nothing is drawn
