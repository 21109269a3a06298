"""`tfds build` without TensorFlow: TFDS's own build command, minus the CLI front-end that needs TF.

    python -m tfds_builder build tfds_builder/vimed_pet --manual_dir=... --data_dir=... --config=regions [...]

The `tfds` console script imports every sub-command at start-up, and its `convert_format` command evaluates
`tf.train.Example` at import time, so `tfds build` dies with "No module named 'tensorflow'" before it looks at
its arguments. Building does not touch TF: this runs `tensorflow_datasets.scripts.cli.build.Args` — the very
class behind `tfds build`, with the same flags — under absl like the real CLI. Where TF is installed, `tfds build
...` works unchanged with the same arguments.
"""
from __future__ import annotations

import sys

from absl import app
from tensorflow_datasets.scripts.cli import build, cli_utils


def _parse(argv: list[str]):
    args = list(argv)
    if len(args) > 1 and args[1] == "build":  # accept `build` as in `tfds build`
        args = [args[0], *args[2:]]
    return cli_utils.make_flags_parser(build.Args, description="TFDS build (no TensorFlow needed)")(args)


def _main(args) -> None:
    import tensorflow_datasets as tfds

    tfds.core.visibility.set_availables([tfds.core.visibility.DatasetType.TFDS_PUBLIC,
                                         tfds.core.visibility.DatasetType.COMMUNITY_PUBLIC])
    args.execute()


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("build", "-h", "--help"):
        print("usage: python -m tfds_builder build <dataset dir> [tfds build flags]", file=sys.stderr)
        sys.exit(2)
    app.run(_main, flags_parser=_parse)
