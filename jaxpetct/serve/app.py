"""The server: uploads read under a size cap into one private temporary folder, a queue, and one worker thread that
owns the model, so predictions never run concurrently while the HTTP threads keep answering.

An upload is a stranger's file and may be a patient's study: its body is read only up to what it declared and only
while under `--max-upload-mb` (a bigger declaration is refused before a byte is read), it is stored under a name of
ours (the uploaded file name, which may be a patient's, is never used, shown or logged), unpacked by
`predict.inputs.unzip` (its checks against path escapes, links and zip bombs) into the job's folder, and deleted,
archive and unpacked copy, when the job ends. The log holds job ids (random, unguessable: they are the only key to a
job's page) and pseudonymous study ids, never a file name or a message that quotes the input; a message shown on a
page has the upload's folder names taken out. A broken upload or a bug fails its job only: the worker goes on.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import queue
import re
import secrets
import shutil
import sys
import tempfile
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Optional
from urllib.parse import urlsplit

from jaxpetct.errors import UserError
from jaxpetct.predict.inputs import MAX_UNZIPPED_BYTES, unzip
from jaxpetct.serve import page
from jaxpetct.serve.upload import SLACK, UploadError, open_body, read_upload

log = logging.getLogger("jaxpetct.serve")
KEEP_JOBS = 20  # finished jobs whose results stay viewable; older ones are deleted
MAX_QUEUED = 20  # uploads waiting at once: each holds its file on disk
JOB_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
STUDY_FILES = {"viewer.html": "text/html; charset=utf-8", "report.json": "application/json; charset=utf-8",
               "lesions.json": "application/json; charset=utf-8"}
FINISHED = ("done", "failed")


@dataclasses.dataclass
class Job:
    id: str
    dir: str
    seq: int
    state: str = "queued"  # queued -> running -> done | failed
    message: str = ""
    studies: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)
    queued_at: float = dataclasses.field(default_factory=time.monotonic)
    started_at: float = 0.0
    finished_at: float = 0.0

    @property
    def upload(self) -> str:
        return os.path.join(self.dir, "upload.zip")


def web_message(error: BaseException) -> str:
    """The library's one-line message, without the CLI's flag name (the page has no --study)."""
    text = " ".join(str(error).split())
    return text[len("--study "):] if text.startswith("--study ") else text


def redact_paths(text: str, folder: str) -> str:
    """Folder names of the upload replaced by "…" in a message: a hospital's layout names folders after patients,
    and the library's messages quote relative paths (fine in a terminal, not on a page anyone with the link sees)."""
    if "/" not in text or not os.path.isdir(folder):
        return text
    dirs = [os.path.relpath(d, folder).replace(os.sep, "/") + "/" for d, _, _ in os.walk(folder) if d != folder]
    for rel in sorted(dirs, key=len, reverse=True):
        text = text.replace(rel, "…/")
    return text


class App:
    """Jobs, their folders and the worker. `predict(input_dir, out_dir)` returns a `PredictSummary`; only the
    worker thread calls it."""

    def __init__(self, predict: Callable, *, max_upload_bytes: int, keep: int = KEEP_JOBS,
                 max_unzipped_bytes: int = MAX_UNZIPPED_BYTES, temp_parent: Optional[str] = None):
        self.predict, self.max_upload_bytes, self.keep = predict, int(max_upload_bytes), int(keep)
        self.max_unzipped_bytes = int(max_unzipped_bytes)
        self.root = tempfile.mkdtemp(prefix="jaxpetct-serve-", dir=temp_parent)  # mode 0700
        self.jobs_dir = os.path.join(self.root, "jobs")
        os.mkdir(self.jobs_dir, 0o700)
        self.jobs: dict[str, Job] = {}
        self.lock = threading.Lock()
        self.queue: queue.Queue = queue.Queue()
        self.closing = threading.Event()
        self._seq = 0
        self.worker = threading.Thread(target=self._work, name="jaxpetct-serve-worker", daemon=True)
        self.worker.start()

    def new_job(self) -> Job:
        """A job folder for an upload about to be read; refused while the queue is full."""
        with self.lock:
            if sum(j.state == "queued" for j in self.jobs.values()) >= MAX_QUEUED:
                raise UploadError(503, f"{MAX_QUEUED} uploads are already waiting: try again in a few minutes")
            self._seq += 1
            seq = self._seq
        job_id = secrets.token_urlsafe(18)
        folder = os.path.join(self.jobs_dir, job_id)
        os.mkdir(folder, 0o700)  # not makedirs: after shutdown removed the root, nothing may recreate it
        return Job(job_id, folder, seq)

    def submit(self, job: Job, n_bytes: int) -> None:
        with self.lock:
            job.queued_at = time.monotonic()
            self.jobs[job.id] = job
        log.info("job %s: queued (%.1f MB)", job.id, n_bytes / 2**20)
        self.queue.put(job)

    def discard(self, job: Job) -> None:
        shutil.rmtree(job.dir, ignore_errors=True)

    def view(self, job_id: str) -> Optional[dict]:
        """The job's status JSON; None for an unknown (or deleted) job."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None:
                return None
            now = time.monotonic()
            out = {"job": job.id, "state": job.state, "message": job.message, "studies": list(job.studies),
                   "failed": list(job.failed)}
            if job.state == "queued":
                out["position"] = sum(j.state == "queued" and j.seq <= job.seq for j in self.jobs.values())
            if job.state != "queued":
                out["elapsed_s"] = round((job.finished_at or now) - job.started_at, 1)
        return out

    def study_file(self, job_id: str, study_id: str, name: str) -> Optional[str]:
        """The path of one output file of a finished job; None unless the study is one of the job's outputs (so a
        request can never name a path of its own)."""
        with self.lock:
            job = self.jobs.get(job_id)
            if job is None or job.state != "done" or study_id not in job.studies or name not in STUDY_FILES:
                return None
            return os.path.join(job.dir, "out", study_id, name)

    def _work(self) -> None:
        while True:
            job = self.queue.get()
            if job is None or self.closing.is_set():
                return
            self._run(job)
            self._prune()

    def _run(self, job: Job) -> None:
        with self.lock:
            job.state, job.started_at = "running", time.monotonic()
        log.info("job %s: running (waited %.1f s)", job.id, job.started_at - job.queued_at)
        try:
            state, message, studies, failed = self._outcome(job)
        finally:
            shutil.rmtree(os.path.join(job.dir, "upload"), ignore_errors=True)
            if os.path.exists(job.upload):
                os.remove(job.upload)
        with self.lock:
            job.state, job.message, job.studies, job.failed = state, message, studies, failed
            job.finished_at = time.monotonic()
        log.info("job %s: %s in %.1f s; studies %s; failed %s", job.id, state, job.finished_at - job.started_at,
                 ",".join(studies) or "-", ",".join(str(f.get("study", "-")) for f in failed) or "-")

    def _outcome(self, job: Job) -> tuple[str, str, list, list]:
        """(state, message, studies, failures) of a job, the upload's folder names taken out of every message."""
        folder = os.path.join(job.dir, "upload")
        try:
            summary = self._predict(job)
        except UserError as e:
            log.info("job %s: refused (%s)", job.id, type(e).__name__)
            return "failed", redact_paths(web_message(e), folder), [], []
        except Exception as e:  # a bug: the page says so, the server goes on with the next upload
            frames = "; ".join(f"{os.path.basename(f.filename)}:{f.lineno} {f.name}"
                               for f in traceback.extract_tb(e.__traceback__)[-4:])
            log.error("job %s: internal error %s at %s", job.id, type(e).__name__, frames)
            return "failed", f"internal error ({type(e).__name__}); the server's log names this job", [], []
        failed = [{k: redact_paths(str(v), folder) for k, v in f.items()} for f in summary.failed]
        if summary.predicted:
            return "done", "", list(summary.predicted), failed
        first = failed[0] if failed else {"study": "-", "file": "-", "reason": "no study in the upload"}
        return "failed", f"no study could be predicted: study {first['study']}: {first['file']}: {first['reason']}", \
            [], failed

    def _predict(self, job: Job):
        """Unpacks the upload next to its job (inside the server's folder, not the system's temp) and deletes the
        archive before the model runs: from then on only the unpacked copy exists, and only until the job ends."""
        folder = os.path.join(job.dir, "upload")
        os.mkdir(folder, 0o700)
        unzip(job.upload, folder, max_bytes=self.max_unzipped_bytes)
        os.remove(job.upload)
        return self.predict(folder, os.path.join(job.dir, "out"))

    def _prune(self) -> None:
        with self.lock:
            finished = sorted((j for j in self.jobs.values() if j.state in FINISHED), key=lambda j: j.finished_at)
            old = finished[:max(0, len(finished) - self.keep)]
            for job in old:
                del self.jobs[job.id]
        for job in old:
            shutil.rmtree(job.dir, ignore_errors=True)
            log.info("job %s: results deleted (the last %d jobs are kept)", job.id, self.keep)

    def close(self, wait_s: float = 10.0) -> None:
        """Stops the worker (a prediction under way gets `wait_s` to finish) and deletes every upload and result."""
        self.closing.set()
        self.queue.put(None)
        self.worker.join(wait_s)
        shutil.rmtree(self.root, ignore_errors=True)
        log.info("temporary folder deleted")


class Handler(BaseHTTPRequestHandler):
    """GET / (the form), POST /upload, GET /job/<id>[/status | /viewer | /<study>/<file>]."""

    server_version = "jaxpetct-serve"
    timeout = 120  # a stalled upload frees its thread

    @property
    def app(self) -> App:
        return self.server.app

    def version_string(self) -> str:
        return self.server_version  # not the Python version

    def log_message(self, format, *args) -> None:
        """Silenced: the default line quotes the raw request; `_send` logs the route and the job id only."""

    def do_GET(self) -> None:
        if not self._host_ok():
            return
        parts = [p for p in urlsplit(self.path).path.split("/") if p]
        if not parts:
            return self._html(200, page.index_page(self.app.max_upload_bytes))
        if parts == ["favicon.ico"]:
            return self._send(204, b"", "image/x-icon", [])
        if parts[0] == "job" and len(parts) >= 2 and JOB_ID.fullmatch(parts[1]):
            return self._job(parts[1], parts[2:])
        return self._html(404, page.error_page(404, "no such page"))

    def do_POST(self) -> None:
        if not self._host_ok():
            return
        if urlsplit(self.path).path != "/upload":
            self.close_connection = True
            return self._html(404, page.error_page(404, "no such page"))
        body = job = None
        try:
            body = open_body(self.headers, self.rfile, self.app.max_upload_bytes)
            job = self.app.new_job()
            with open(job.upload, "wb") as out:
                n_bytes = read_upload(body, self.headers.get("Content-Type", ""), out, self.app.max_upload_bytes)
        except (UploadError, OSError) as e:
            if job is not None:
                self.app.discard(job)
            if body is not None and 0 < body.left <= SLACK:
                body.drain()  # what is left is small: reading it lets the browser see the answer, not a reset
            self.close_connection = True
            status, message = (e.status, e.message) if isinstance(e, UploadError) else (500, "the upload could not "
                                                                                            "be stored")
            return self._html(status, page.error_page(status, message))
        self.app.submit(job, n_bytes)
        self._send(303, b"", "text/plain", [("Location", f"/job/{job.id}")], job.id)

    def _job(self, job_id: str, rest: list) -> None:
        view = self.app.view(job_id)
        if view is None:
            return self._html(404, page.error_page(404, f"no such job (the results of the last {self.app.keep} "
                                                        "jobs are kept while the server runs)"))
        if not rest:
            reports = {sid: self._report(job_id, sid) for sid in view["studies"]} if view["state"] == "done" else {}
            return self._html(200, page.job_page(job_id, view, reports), job_id)
        if rest == ["status"]:
            return self._send(200, json.dumps(view).encode("utf-8"), "application/json", [], job_id)
        if rest == ["viewer"] and view["studies"]:
            rest = [view["studies"][0], "viewer.html"]
        path = self.app.study_file(job_id, *rest) if len(rest) == 2 else None
        try:
            with open(path or "", "rb") as fh:
                data = fh.read()
        except OSError:
            return self._html(404, page.error_page(404, "no such file in this job"), job_id)
        headers = [("Content-Disposition", f'attachment; filename="{rest[0]}-{rest[1]}"')] \
            if rest[1].endswith(".json") else []
        self._send(200, data, STUDY_FILES[rest[1]], headers, job_id)

    def _report(self, job_id: str, study_id: str) -> dict:
        try:
            with open(self.app.study_file(job_id, study_id, "report.json") or "", encoding="utf-8") as fh:
                return json.load(fh)
        except (OSError, ValueError):
            return {}

    def _host_ok(self) -> bool:
        """Refuses a Host other than the server's own: a web page whose name was re-pointed at 127.0.0.1 (DNS
        rebinding) must not read the results of this computer's uploads."""
        allowed, host = getattr(self.server, "allowed_hosts", None), self.headers.get("Host")
        if allowed is None or host is None or host.lower() in allowed:
            return True
        self.close_connection = True
        self._html(421, page.error_page(421, "this server answers only to its own address"))
        return False

    def _html(self, status: int, text: str, job_id: str = "") -> None:
        self._send(status, text.encode("utf-8"), "text/html; charset=utf-8", [], job_id)

    def _send(self, status: int, data: bytes, ctype: str, headers: list, job_id: str = "") -> None:
        self.send_response(status)
        for key, value in [("Content-Type", ctype), ("Content-Length", str(len(data))), ("Cache-Control", "no-store"),
                           ("X-Content-Type-Options", "nosniff"), ("X-Frame-Options", "SAMEORIGIN"),
                           ("Referrer-Policy", "no-referrer"), *headers]:
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)
        route = (urlsplit(self.path).path.split("/") + [""])[1]
        log.info("%s %s%s %d", self.command, f"/{route}" if route in ("", "job", "upload") else "(other)",
                 f" {job_id}" if job_id else "", status)


class Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled upload does not hold up shutdown

    def handle_error(self, request, client_address) -> None:
        """A dropped connection is routine; the default prints a traceback with the client's address."""
        log.warning("a request failed: %s", sys.exc_info()[0].__name__)


def make_server(app: App, host: str, port: int) -> Server:
    """Listening now (port 0: a free one); `serve_forever()` answers each request on its own thread."""
    server = Server((host, port), Handler)
    server.app = app
    port = server.server_address[1]
    names = {host, "localhost", "127.0.0.1", "[::1]", f"[{host}]"}
    server.allowed_hosts = None if host in ("", "0.0.0.0", "::") else {f"{n}:{port}".lower() for n in names}
    return server
