"""Build a ViMed-PET dataset config from the command line.

    python -m jaxpetct.data build --manual-dir ROOT --data-dir DATA --config regions [--beam] [--workers N]
        [--beam-options "runner=DirectRunner,direct_num_workers=2,direct_running_mode=multi_processing"]
        [--volume-shape 32 64 64] [--slice-shape 64 64] [--compress|--no-compress] [--salt S] [--overwrite]
        [--no-progress]

Prints a summary (examples per split, quarantined studies, bytes, studies/s); a bad manual dir or manifest
exits with status 2 and one line.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional

from jaxpetct.errors import UserError, one_line


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jaxpetct.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build", help="build one config into DATA/vimed_pet/<config>/<version>")
    b.add_argument("--manual-dir", required=True, help="release root or DICOM folder")
    b.add_argument("--data-dir", required=True)
    b.add_argument("--config", default="regions", help="regions, study, slices, vqa, comparison (+ _paper)")
    b.add_argument("--beam", action="store_true", help="build with Apache Beam (DirectRunner unless --beam-options)")
    b.add_argument("--beam-options", default=None, help='TFDS syntax: "runner=...,key=value,..."')
    b.add_argument("--workers", type=int, default=None, help="DirectRunner processes (default: CPU count)")
    b.add_argument("--volume-shape", type=int, nargs=3, default=None, metavar=("D", "H", "W"))
    b.add_argument("--slice-shape", type=int, nargs=2, default=None, metavar=("H", "W"))
    b.add_argument("--compress", dest="compress", action="store_true", default=None,
                   help="zlib the volumes (default for *_paper configs)")
    b.add_argument("--no-compress", dest="compress", action="store_false", help="store raw bytes")
    b.add_argument("--salt", default=None, help="pseudonym salt (else $JAXPETCT_SALT; required for real data)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--overwrite", action="store_true")
    b.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    from jaxpetct.data.build import build_dataset

    try:
        summary = build_dataset(args.manual_dir, args.data_dir, args.config, beam=args.beam or bool(args.beam_options),
                                beam_options=args.beam_options, workers=args.workers, volume_shape=args.volume_shape,
                                slice_shape=args.slice_shape, compress=args.compress, salt=args.salt, seed=args.seed,
                                progress=not args.no_progress, overwrite=args.overwrite)
    except (UserError, FileNotFoundError) as e:
        print(one_line(e), file=sys.stderr)
        return 2
    print("\n".join(summary.lines()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
