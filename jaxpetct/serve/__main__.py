"""`python -m jaxpetct.serve --model EXPORT [--port 8765] [--host 127.0.0.1] [--salt S] [--max-upload-mb 2048]`

Opens a local page where a study's .zip is uploaded and its generated report, lesions and images come back. The
model is loaded and compiled before the server listens, so the first upload waits for the model only. Exit status:
2 with one line on stderr for a bad model or flag; 0 after Ctrl-C or SIGTERM, with every upload and result deleted.
"""
from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import sys
import time
from typing import Optional

from jaxpetct.errors import UserError, one_line
from jaxpetct.serve.app import App, log, make_server
from jaxpetct.studies.deid import SALT_ENV


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxpetct.serve",
                                description="A local web page that writes PET/CT reports for uploaded studies.")
    p.add_argument("--model", required=True, help="export directory (python launch.py --mode export)")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this computer only)")
    p.add_argument("--salt", default=None, help="pseudonym salt (else $JAXPETCT_SALT; required for real data)")
    p.add_argument("--max-upload-mb", type=float, default=2048.0, help="largest .zip accepted")
    p.add_argument("--max-unzipped-gb", type=float, default=8.0, help="cap on what a .zip may unpack to")
    return p.parse_args(argv)


def warm_up(predictor) -> None:
    """Runs the generator once on blank volumes with the instructions of the regions a study splits into: the jitted
    shapes are the batch's, not the pixels', so this compiles what every upload will use."""
    import numpy as np

    from jaxpetct.eval.runner import EvalExample, answer_all
    from jaxpetct.studies.regions import REGION_SECTIONS

    names = list(REGION_SECTIONS) + (["whole_body"] if predictor.pre.include_whole_body else [])
    blank = np.zeros(predictor.generator.input_shape, np.float32)
    examples = [EvalExample.report(f"warm-up:{n}", blank, "", region=n, study_id="warm-up") for n in names]
    answer_all(predictor.generator, predictor.pre.decoding, examples)


def _logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s serve: %(message)s", "%H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False


def load(args: argparse.Namespace):
    """The predictor, compiled; UserError (one line) for a model that cannot be used."""
    from jaxpetct.predict import Predictor

    if args.max_upload_mb <= 0 or args.max_unzipped_gb <= 0:
        raise UserError("--max-upload-mb and --max-unzipped-gb must be positive")
    start = time.monotonic()
    predictor = Predictor.from_export(args.model)
    log.info("model %s loaded; compiling", os.path.basename(os.path.abspath(args.model)))
    warm_up(predictor)
    log.info("model ready in %.1f s", time.monotonic() - start)
    if not (args.salt or os.environ.get(SALT_ENV)):
        log.info("no --salt and no $JAXPETCT_SALT: only synthetic studies can be predicted (real ones are refused)")
    return predictor


def _stop(signum, frame) -> None:
    """SIGTERM ends serve_forever the way Ctrl-C does, through the same clean-up; SIGINT is set too, since a shell
    starts a background job with SIGINT ignored."""
    raise KeyboardInterrupt


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    _logging()
    from jaxpetct.predict import predict_path

    try:
        predictor = load(args)
    except (UserError, ValueError) as e:
        print(one_line(e), file=sys.stderr)
        return 2
    predict = functools.partial(predict_path, predictor, salt=args.salt, progress=False)
    app = App(predict, max_upload_bytes=int(args.max_upload_mb * 2**20),
              max_unzipped_bytes=int(args.max_unzipped_gb * 2**30))
    try:
        server = make_server(app, args.host, args.port)
    except OSError as e:
        app.close()
        print(f"error: cannot listen on {args.host}:{args.port}: {e.strerror or e}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    host, port = server.server_address[:2]
    log.info("temporary folder %s", app.root)
    print(f"serving on http://{'[' + host + ']' if ':' in host else host}:{port}/ (Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
