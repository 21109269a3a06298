"""`python -m jaxpetct.predict --model EXPORT --study PATH --out DIR [--salt S] [--patient NAME] [sampling flags]`

PATH is a DICOM folder (any nesting; one or many studies), a release root (`--patient` picks one study), a single
file, or a `.zip` of any of these. Exit status: 0 every study predicted; 1 some failed (each listed on stderr in one
line, and in DIR/predict_summary.json); 2 nothing could be predicted (a bad model, input or flag: one line).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from jaxpetct.errors import UserError, one_line


def parse(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m jaxpetct.predict", description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="export directory (python launch.py --mode export)")
    p.add_argument("--study", required=True, help="DICOM folder, release root, file or .zip")
    p.add_argument("--out", required=True, help="output folder: one sub-folder per study")
    p.add_argument("--salt", default=None, help="pseudonym salt (else $JAXPETCT_SALT; required for real data)")
    p.add_argument("--patient", default=None, help="in a release root: the manifest name or study key to predict")
    p.add_argument("--max-new-tokens", type=int, default=None)
    p.add_argument("--temperature", type=float, default=None, help="0 = greedy (the default, as eval)")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None, help="regions decoded together")
    p.add_argument("--max-unzipped-gb", type=float, default=8.0, help="cap on what a .zip may unpack to")
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def main(argv: Optional[list[str]] = None) -> int:
    args = parse(argv)
    from jaxpetct.predict import Predictor, predict_path

    decoding = {k: v for k, v in (("max_new_tokens", args.max_new_tokens), ("temperature", args.temperature),
                                  ("top_k", args.top_k), ("top_p", args.top_p), ("seed", args.seed),
                                  ("batch_size", args.batch_size)) if v is not None}
    try:
        predictor = Predictor.from_export(args.model, decoding)
        summary = predict_path(predictor, args.study, args.out, salt=args.salt, patient=args.patient,
                               progress=not args.no_progress, max_bytes=int(args.max_unzipped_gb * 2**30))
    except (UserError, ValueError) as e:
        print(one_line(e), file=sys.stderr)
        return 2
    if summary.skipped_files:
        print(" ".join(f"note: {summary.skipped_files} files joined no study, e.g. {summary.skipped_example}".split()),
              file=sys.stderr)
    for f in summary.failed:
        print("failed: " + " ".join(f"study {f['study']}: {f['file']}: {f['reason']}".split()), file=sys.stderr)
    print(f"predicted {len(summary.predicted)} of {len(summary.predicted) + len(summary.failed)} studies -> {args.out}")
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
