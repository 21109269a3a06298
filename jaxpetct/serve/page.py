"""The HTML of the local page: an upload form, a job page that refreshes itself until the report is written, and
error pages. Plain HTML with a meta refresh, so it works in any browser without scripts; the one script only spares
a doomed upload of an oversized file. Everything shown is escaped: the generated text is model output, and a job's
message may quote a DICOM reason."""
from __future__ import annotations

import html
from typing import Mapping, Optional, Sequence

REFRESH_S = 2
STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em auto;max-width:1300px;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}.muted{color:#666}
.state{font-size:1.1em;padding:.6em 1em;border-radius:6px;background:#eef3fb;display:inline-block}
.error{background:#fdecea;color:#8a1c12;padding:.6em 1em;border-radius:6px}
table.reports{border-collapse:collapse;width:100%}table.reports td,table.reports th{border:1px solid #ccc;
padding:.4em .6em;vertical-align:top;text-align:left}td.section{width:14em;font-weight:600}
iframe{width:100%;height:1400px;border:1px solid #ccc;margin-top:1em}form{margin:1.5em 0}
.links a{margin-right:1.2em}"""


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def layout(title: str, body: str, *, refresh: Optional[int] = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">{meta}<title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{STYLE}</style></head>'
            f'<body><h1><a href="/">jaxpetct</a> · {_e(title)}</h1>{body}</body></html>')


def _mb(n_bytes: int) -> str:
    return f"{n_bytes / 2**20:g}"


def index_page(max_upload_bytes: int) -> str:
    """The form posts multipart/form-data, which every browser sends without any script."""
    body = ('<p>Upload a <b>.zip</b> of one patient\'s PET/CT study (its DICOM folder: CT and PET series). The model '
            'writes the findings of each body region; the page shows them with the PET MIP, CT slices and the lesions '
            'read from the text.</p>'
            '<form id="upload" method="post" action="/upload" enctype="multipart/form-data">'
            '<input id="file" type="file" name="study" accept=".zip,application/zip" required> '
            '<button type="submit">Write the report</button></form>'
            f'<p id="too-big" class="error" style="display:none"></p>'
            f'<p class="muted">At most {_mb(max_upload_bytes)} MB. The upload stays on this computer, in a private '
            'temporary folder that the server deletes (the last results are kept for viewing until it stops). '
            'Studies are named by a pseudonymous id only.</p>')
    return layout("PET/CT report", body + _limit_script(int(max_upload_bytes)))


def _limit_script(max_bytes: int) -> str:
    """The server refuses an oversized body before reading it, which a browser may show as a reset connection:
    checking the size first gives the reason instead."""
    return ("<script>document.getElementById('upload').addEventListener('submit', function (ev) {"
            " var f = document.getElementById('file').files[0], note = document.getElementById('too-big');"
            f" if (f && f.size > {max_bytes}) {{ ev.preventDefault(); note.style.display = 'block';"
            f" note.textContent = 'This file is larger than the limit of {_mb(max_bytes)} MB.'; }} }});</script>")


def error_page(status: int, message: str) -> str:
    return layout(f"error {status}", f'<p class="error" id="error">{_e(message)}</p><p><a href="/">Back to the upload '
                                     'form</a></p>')


def _report_table(report: Mapping) -> str:
    """report.json (the release schema): the impression is empty (the model writes region findings only)."""
    impression, findings = "", {}
    for key, value in report.items():
        if isinstance(value, Mapping):
            findings = value
        else:
            impression = str(value)
    rows = "".join(f'<tr><td class="section">{_e(s)}</td><td class="report-generated">{_e(t)}</td></tr>'
                   for s, t in findings.items())
    imp = f'<p><b>Impression:</b> {_e(impression)}</p>' if impression.strip() else ""
    return f'{imp}<table class="reports"><thead><tr><th>Section</th><th>Generated findings</th></tr></thead>' \
           f'<tbody>{rows}</tbody></table>'


def _study_block(job_id: str, study_id: str, report: Mapping) -> str:
    base = f"/job/{_e(job_id)}/{_e(study_id)}"
    links = (f'<p class="links"><a href="{base}/viewer.html" target="_blank">Open the viewer</a>'
             f'<a href="{base}/report.json" download>Download report.json</a>'
             f'<a href="{base}/lesions.json" download>Download lesions.json</a></p>')
    return (f'<section class="study" id="study-{_e(study_id)}"><h2>Study {_e(study_id)}</h2>{links}'
            f'{_report_table(report)}<iframe src="{base}/viewer.html" title="viewer of {_e(study_id)}"></iframe>'
            '</section>')


def _failures(failed: Sequence[Mapping]) -> str:
    if not failed:
        return ""
    items = "".join(f"<li>study {_e(f.get('study', '-'))}: {_e(f.get('file', '-'))}: {_e(f.get('reason', ''))}</li>"
                    for f in failed)
    return f'<h2>Studies that could not be predicted</h2><ul class="error">{items}</ul>'


def job_page(job_id: str, view: Mapping, reports: Mapping[str, Mapping]) -> str:
    """`view` is the job's status JSON; `reports` maps each predicted study id to its report.json."""
    state = view["state"]
    if state == "queued":
        ahead = int(view.get("position", 1)) - 1
        text = "Queued" + (f": {ahead} upload{'s' if ahead != 1 else ''} ahead of this one" if ahead > 0 else "")
        return layout("queued", f'<p class="state" id="state" data-state="queued">{_e(text)}…</p>'
                                f'<p class="muted">This page refreshes itself.</p>', refresh=REFRESH_S)
    if state == "running":
        text = f"Running: reading the study and writing the report ({view.get('elapsed_s', 0):.0f} s)"
        return layout("running", f'<p class="state" id="state" data-state="running">{_e(text)}…</p>'
                                 f'<p class="muted">This page refreshes itself.</p>', refresh=REFRESH_S)
    if state == "failed":
        return layout("failed", f'<p class="state" id="state" data-state="failed">No report</p>'
                                f'<p class="error" id="error">{_e(view.get("message", ""))}</p>'
                                f'{_failures(view.get("failed", ()))}<p><a href="/">Upload another study</a></p>')
    blocks = "".join(_study_block(job_id, sid, reports.get(sid, {})) for sid in view.get("studies", ()))
    done = f"Done in {view.get('elapsed_s', 0):.0f} s"
    return layout("report", f'<p class="state" id="state" data-state="done">{_e(done)}</p>{blocks}'
                            f'{_failures(view.get("failed", ()))}<p><a href="/">Upload another study</a></p>')
