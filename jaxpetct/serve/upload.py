"""Reading an upload without trusting it: only as many bytes as the request declared, refused before reading when
it declares more than the cap, counted again while streamed to disk (the file field of a form, or the raw body),
with a bounded buffer whatever the file's size. The uploaded file name is never kept.
"""
from __future__ import annotations

SLACK = 64 * 1024  # multipart framing around the file, and any small form fields
CHUNK = 1 << 20


class UploadError(Exception):
    """A request refused with its HTTP status and a one-line reason for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


class Body:
    """At most Content-Length bytes of a request, in chunks: a body is never read past what it declared."""

    def __init__(self, rfile, length: int):
        self.rfile, self.left = rfile, int(length)

    def read(self) -> bytes:
        if self.left <= 0:
            return b""
        chunk = self.rfile.read(min(CHUNK, self.left))
        self.left = self.left - len(chunk) if chunk else 0
        return chunk

    def drain(self) -> None:
        while self.read():
            pass


def open_body(headers, rfile, max_bytes: int) -> Body:
    """The body of an upload, refused before reading when it has no length or declares more than the cap allows."""
    if "chunked" in headers.get("Transfer-Encoding", "").lower() or headers.get("Content-Length") is None:
        raise UploadError(411, "the upload must state its length (Content-Length)")
    try:
        length = int(headers["Content-Length"])
    except ValueError:
        raise UploadError(400, "Content-Length is not a number") from None
    if length < 0:
        raise UploadError(400, "Content-Length is negative")
    if length > max_bytes + SLACK:
        raise UploadError(413, too_big(max_bytes))
    return Body(rfile, length)


def too_big(max_bytes: int) -> str:
    return f"the upload is larger than the limit of {max_bytes / 2**20:g} MB (--max-upload-mb)"


def _until(body: Body, buf: bytes, marker: bytes, sink, limit: int, error: UploadError) -> tuple[bytes, int]:
    """Passes what comes before `marker` to `sink` (None: dropped) chunk by chunk, keeping only a marker's length
    back; returns what follows the marker and how many bytes came before it. `error` once more than `limit`."""
    total = 0
    while True:
        i = buf.find(marker)
        cut = i if i >= 0 else max(0, len(buf) - len(marker) + 1)
        total += cut
        if total > limit:
            raise error
        if sink is not None and cut:
            sink(buf[:cut])
        if i >= 0:
            return buf[i + len(marker):], total
        more = body.read()
        if not more:
            raise UploadError(400, "the upload ended early (interrupted, or not a form upload)")
        buf = buf[cut:] + more


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.strip().lower() == "boundary" and 0 < len(value.strip().strip('"')) <= 200:
            return value.strip().strip('"').encode("latin-1")
    raise UploadError(400, "multipart/form-data without a boundary")


def read_multipart(body: Body, content_type: str, out, max_bytes: int) -> int:
    """Streams the first file field of a multipart/form-data body into `out`; other fields are skipped (small)."""
    sep, bad = b"\r\n--" + _boundary(content_type), UploadError(400, "a malformed form upload")
    buf, _ = _until(body, b"\r\n" + body.read(), sep, None, SLACK, bad)
    written = None
    while True:
        while len(buf) < 2:
            more = body.read()
            if not more:
                raise bad
            buf += more
        if buf[:2] == b"--":  # the closing delimiter
            break
        headers = []
        buf, _ = _until(body, buf, b"\r\n\r\n", headers.append, 16 * 1024, bad)
        is_file = written is None and b"filename=" in b"".join(headers).lower()
        if is_file:
            buf, written = _until(body, buf, sep, out.write, max_bytes, UploadError(413, too_big(max_bytes)))
        else:
            buf, _ = _until(body, buf, sep, None, SLACK, bad)
    if not written:
        raise UploadError(400, "no file was uploaded: choose the study's .zip")
    return written


def read_upload(body: Body, content_type: str, out, max_bytes: int) -> int:
    """A form's multipart body, or the archive itself as the raw body (curl --data-binary)."""
    if content_type.lower().startswith("multipart/form-data"):
        return read_multipart(body, content_type, out, max_bytes)
    written = 0
    while chunk := body.read():
        written += len(chunk)
        if written > max_bytes:
            raise UploadError(413, too_big(max_bytes))
        out.write(chunk)
    if not written:
        raise UploadError(400, "the upload is empty")
    return written
