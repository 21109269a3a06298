"""The local page of `python -m jaxpetct.serve`: a real server process with a tiny exported model, a study's .zip
with canary PHI in its tags, folder names and upload file name uploaded as a browser's form would, the job page
rendered by headless Chromium, a broken upload that leaves the server serving, and nothing of the patient in a
page, a log line or a file left behind; plus the upload cap, the queue and the clean-up in-process."""
from __future__ import annotations

import html
import http.client
import io
import json
import os
import pathlib
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile

import numpy as np
import pytest

from jaxpetct.eval.vlm_generate import DecodingConfig
from jaxpetct.predict import PredictSummary
from jaxpetct.serve import App, make_server
from jaxpetct.studies import synthetic

from tests.eval.synthetic_eval import tiny_export
from tests.studies.test_phi_canary import _canaries, _leaks

pytestmark = pytest.mark.integration

REPO = pathlib.Path(__file__).resolve().parents[2]
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome", "chrome")
                 if shutil.which(n)), None)
DECODING = DecodingConfig(max_new_tokens=8, batch_size=4, length_buckets=(128,))
UPLOAD_NAME = "NGUYEN_VAN_CANARY_study.zip"  # a patient's name in the file name: never logged, shown or stored


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
    return tiny_export(tmp_path_factory.mktemp("model") / "export", DECODING)


@pytest.fixture(scope="module")
def study_zip(tmp_path_factory) -> bytes:
    """One synthetic DICOM study, canary PHI in tags and folder names, its report sidecars removed, zipped."""
    root = tmp_path_factory.mktemp("cohort") / "c"
    synthetic.write_cohort(str(root), n=1, seed=5, dicom=True, phi_canaries=True)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted((root / "dicom").rglob("*")):
            if path.is_file() and not path.name.startswith("report"):
                z.write(path, path.relative_to(root / "dicom").as_posix())
        names = " ".join(z.namelist())
    assert _leaks(names, _canaries(1)) and "report" not in names  # the folder names really carry a patient's name
    return buf.getvalue()


def _multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = "----jaxpetct" + secrets.token_hex(8)
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="study"; filename="{filename}"\r\n'
            "Content-Type: application/zip\r\n\r\n").encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def _upload(base: str, data: bytes, filename: str = UPLOAD_NAME) -> str:
    """POSTs the form as a browser does and follows the 303 to the job page; returns its URL."""
    body, ctype = _multipart(data, filename)
    req = urllib.request.Request(base + "upload", data=body, headers={"Content-Type": ctype}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 200 and "/job/" in resp.url
        return resp.url


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=60) as resp:
            return resp.status, resp.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")


def _wait(job_url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = json.loads(_get(job_url + "/status")[1])
        if status["state"] in ("done", "failed"):
            return status
        time.sleep(0.3)
    raise AssertionError(f"job not finished after {timeout} s: {status}")


def _chromium(*args, timeout=90):
    return subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--force-device-scale-factor=1", "--window-size=1400,1800", *args],
                          capture_output=True, text=True, timeout=timeout)


def _folder_text(folder: pathlib.Path) -> str:
    return "\n".join(str(p) + "\n" + (p.read_text("utf-8", errors="replace") if p.is_file() else "")
                     for p in folder.rglob("*"))


def _flat(text: str) -> str:
    return " ".join(html.unescape(text).split())


class Server:
    """`python -m jaxpetct.serve` on a free port, its system temp folder private to the test."""

    def __init__(self, export_dir, tmp: pathlib.Path):
        self.tmp, self.out, self.err = tmp / "tmp", tmp / "server.out", tmp / "server.err"
        self.tmp.mkdir()
        env = {**os.environ, "TMPDIR": str(self.tmp), "PYTHONUNBUFFERED": "1"}
        env.pop("JAXPETCT_SALT", None)
        with open(self.out, "w") as out, open(self.err, "w") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "jaxpetct.serve", "--model", str(export_dir),
                                          "--port", "0", "--salt", "serve-test"], cwd=REPO, env=env, stdout=out,
                                         stderr=err)
        deadline = time.monotonic() + 120
        while "serving on " not in self.out.read_text() and self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "serving on " in self.out.read_text(), self.logs()[-3000:]
        self.base = self.out.read_text().split("serving on ")[1].split()[0]
        [line] = [ln for ln in self.err.read_text().splitlines() if "temporary folder " in ln]
        self.root = pathlib.Path(line.split("temporary folder ")[1].strip())

    def logs(self) -> str:
        return self.out.read_text() + self.err.read_text()

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60)


@pytest.fixture
def server(export_dir, tmp_path):
    srv = Server(export_dir, tmp_path)
    yield srv
    if srv.proc.poll() is None:
        srv.proc.kill()
        srv.proc.wait()


def test_upload_report_screenshot_error_and_clean_up(server, study_zip, tmp_path):
    canaries, pages = _canaries(1), []
    status, index = _get(server.base)
    assert status == 200 and 'enctype="multipart/form-data"' in index and 'type="file"' in index
    job_url = _upload(server.base, study_zip)
    done = _wait(job_url)
    assert done["state"] == "done" and len(done["studies"]) == 1 and done["failed"] == [], done
    [sid] = done["studies"]
    status, job_page = _get(job_url)
    _, viewer = _get(job_url + "/viewer")
    _, report = _get(f"{job_url}/{sid}/report.json")
    _, lesions = _get(f"{job_url}/{sid}/lesions.json")
    findings = [t for t in json.loads(report)["Mô tả hình ảnh"].values() if t.strip()]
    assert status == 200 and findings and json.loads(lesions)["study_id"] == sid
    for text in findings:  # the generated report, on the job page and in the viewer
        assert " ".join(text.split()) in _flat(job_page) and " ".join(text.split()) in _flat(viewer)
    assert 'id="pet-mip"' in viewer and f"{sid}/viewer.html" in job_page
    pages += [index, job_page, viewer, report, lesions, json.dumps(done)]
    left = _folder_text(server.tmp)  # while serving: the results only, the upload and its unpacked copy deleted
    assert "upload.zip" not in left and ".dcm" not in left and "viewer.html" in left

    if CHROMIUM is not None:
        shot = tmp_path / "job.png"
        run = _chromium("--virtual-time-budget=5000", f"--screenshot={shot}", job_url)
        assert shot.is_file() and shot.stat().st_size > 20_000, run.stderr[-2000:]

    junk = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    bad_url = _upload(server.base, junk, "random.zip")
    bad = _wait(bad_url)
    _, bad_page = _get(bad_url)
    assert bad["state"] == "failed" and "not a readable zip archive" in bad["message"], bad
    assert 'id="error"' in bad_page and "not a readable zip archive" in bad_page
    empty_url = _upload(server.base, _small_zip(junk, "NGUYEN_VAN_CANARYAAA_PIDCANARY000000/x.dcm"))
    empty = _wait(empty_url)  # a zip without a study: the reason, the patient-named folder taken out
    _, empty_page = _get(empty_url)
    assert empty["state"] == "failed" and "no CT/PET study found" in empty_page and "…/x.dcm" in empty_page, empty
    again = _wait(_upload(server.base, study_zip))  # the server kept serving
    assert again["state"] == "done" and again["studies"] == [sid], again
    pages += [bad_page, json.dumps(bad), empty_page, json.dumps(empty), json.dumps(again)]

    leaks = _leaks("\n".join(pages) + server.logs() + left + _folder_text(server.tmp), canaries)
    assert leaks == [] and UPLOAD_NAME not in server.logs(), leaks
    assert server.stop() == 0, server.logs()[-3000:]
    assert not server.root.exists() and list(server.tmp.iterdir()) == [], list(server.tmp.rglob("*"))
    assert "Traceback" not in server.logs() and not _leaks(server.logs(), canaries)


def test_a_bad_model_is_one_line_exit_2(tmp_path):
    run = subprocess.run([sys.executable, "-m", "jaxpetct.serve", "--model", str(tmp_path / "nope")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    lines = run.stderr.strip().splitlines()
    assert run.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), run.stderr[-2000:]


# In-process: a stand-in model, so the upload cap, the queue and the clean-up are checked in seconds.

class FakeModel:
    """Writes a fixed report once released; counts how many predictions ever ran at the same time."""

    def __init__(self):
        self.release, self.lock, self.running, self.most = threading.Event(), threading.Lock(), 0, 0

    def __call__(self, input_dir: str, out_dir: str) -> PredictSummary:
        assert any(p.is_file() for p in pathlib.Path(input_dir).rglob("*"))
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        assert self.release.wait(30)
        folder = pathlib.Path(out_dir) / "fake-study"
        folder.mkdir(parents=True)
        (folder / "report.json").write_text(json.dumps({"Nhận định kết quả": "", "Mô tả hình ảnh": {
            "Lồng ngực": "Phổi hai bên bình thường."}}), "utf-8")
        (folder / "viewer.html").write_text("<html><body>viewer</body></html>", "utf-8")
        (folder / "lesions.json").write_text('{"study_id": "fake-study", "sections": {}}', "utf-8")
        time.sleep(0.1)
        with self.lock:
            self.running -= 1
        return PredictSummary(["fake-study"], [])


@pytest.fixture
def local(tmp_path):
    app = App(FakeModel(), max_upload_bytes=10_000, keep=1, temp_parent=str(tmp_path))
    server = make_server(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield app, server, f"http://127.0.0.1:{server.server_address[1]}/"
    server.shutdown()
    server.server_close()
    app.close()


def _post(server, body: bytes, headers: dict) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
    conn.putrequest("POST", "/upload")
    for key, value in headers.items():
        conn.putheader(key, value)
    conn.endheaders()
    try:
        conn.send(body)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server may answer and close before the body is sent
    resp = conn.getresponse()
    return resp.status, resp.read().decode("utf-8")


def _small_zip(payload: bytes = b"x" * 100, name: str = "CANARY_folder/a.dcm") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(name, payload)
    return buf.getvalue()


def test_uploads_over_the_limit_get_413_and_the_server_goes_on(local):
    app, server, base = local
    body, ctype = _multipart(b"\0" * 20_000, "big.zip")  # declared within the form's slack, too big when counted
    status, text = _post(server, body, {"Content-Type": ctype, "Content-Length": str(len(body))})
    assert status == 413 and "larger than the limit of" in text, text
    status, text = _post(server, b"x" * 1000, {"Content-Type": ctype, "Content-Length": str(10**12)})
    assert status == 413 and "larger than the limit" in text  # refused on its declaration, body unread
    status, text = _post(server, b"\0" * 20_000, {"Content-Type": "application/zip", "Content-Length": "20000"})
    assert status == 413
    status, _ = _post(server, b"abc", {"Content-Type": "application/zip"})
    assert status == 411
    assert list(pathlib.Path(app.jobs_dir).iterdir()) == []  # a refused upload leaves nothing behind

    first, second = _upload(base, _small_zip()), _upload(base, _small_zip())
    deadline = time.monotonic() + 20
    while json.loads(_get(first + "/status")[1])["state"] != "running" and time.monotonic() < deadline:
        time.sleep(0.05)
    waiting = [_get(first)[1], _get(second)[1]]  # one running, one queued behind it; both pages refresh themselves
    assert 'data-state="running"' in waiting[0] and 'data-state="queued"' in waiting[1], waiting
    assert all('http-equiv="refresh"' in p for p in waiting)
    assert json.loads(_get(second + "/status")[1])["position"] == 1
    app.predict.release.set()
    assert _wait(second)["state"] == "done" and app.predict.most == 1  # one prediction at a time
    assert _get(first)[0] == 404 and "Phổi hai bên bình thường." in _get(second)[1]  # keep=1: older deleted
    assert [p.name for p in pathlib.Path(app.jobs_dir).iterdir()] == [second.rsplit("/", 1)[1]]
    assert _get(base + "job/" + "A" * 24)[0] == 404 and _get(f"{second}/../../etc/passwd")[0] == 404
    assert _get(f"{second}/fake-study/../report.json")[0] == 404
    bad_host = urllib.request.Request(second, headers={"Host": "evil.example:80"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(bad_host, timeout=30)
    assert refused.value.code == 421
    root = app.root
    app.close()
    assert not os.path.exists(root)
