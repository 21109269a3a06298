"""A local web page in front of `jaxpetct.predict`: `python -m jaxpetct.serve --model EXPORT`.

A doctor without a terminal uploads a study's .zip and reads the generated report beside its images. Standard
library only (http.server): it runs wherever predict runs, and binds to this computer unless told otherwise.
`app` (jobs, the one worker that owns the model, the HTTP handler), `upload` (bounded reading of an upload),
`page` (the HTML).
"""
from jaxpetct.serve.app import App, make_server

__all__ = ["App", "make_server"]
