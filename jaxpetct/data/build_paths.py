"""The two build paths over the same work items: a plain loop, or an Apache Beam pipeline (`beam.Create(items) |
beam.ParDo`), plus the quarantine file both leave in the dataset directory.

Both call `examples.process` per item, so the records are the same; TFDS orders records by a hash of their key in
both paths, so even the files match. In the Beam path, quarantine records leave the workers as a tagged output
written next to the records (`quarantine-<split>-*.jsonl`) and are merged into `quarantine.jsonl` once the pipeline
has finished; the plain path collects them in memory. Everything is written inside TFDS's temporary directory,
so an interrupted build leaves neither records nor a quarantine file visible.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from typing import Iterable, Iterator

from jaxpetct.data.examples import process
from jaxpetct.data.plan import BuildOptions, CohortError, WorkItem
from jaxpetct.threads import ordered_map

QUARANTINE = "quarantine.jsonl"
NOTES = "build_notes.json"
_PART_PREFIX = "quarantine-part-"

log = logging.getLogger(__name__)


class EmptySplitError(CohortError):
    """Every study of a split failed: one line naming the split and an example reason."""


def plain_examples(items: Iterable[WorkItem], options: BuildOptions, quarantine: list, *, progress: bool = True,
                   desc: str = "") -> Iterator[tuple[str, dict]]:
    """(key, example) of every item, in plan order; failures go to `quarantine` (a tqdm bar counts studies)."""
    from tqdm.auto import tqdm

    items = list(items)
    written, first = 0, None
    for outputs in tqdm(_processed(items, options), total=len(items), desc=desc or "studies", unit="study",
                        disable=not progress, file=sys.stderr):
        for tag, value in outputs:
            if tag == "example":
                written += 1
                yield value
            else:
                quarantine.append(value)
                first = first or value
                log.warning("quarantined %s (%s): %s: %s", value["study"], value["split"], value["file"],
                            value["reason"])
    if items and not written:
        # TFDS cannot write an empty split (its AssertionError would be all the user sees): one line instead.
        raise EmptySplitError(
            f"split {items[0].split}: every one of its {len(items)} studies was quarantined, so there is nothing to "
            f"write (the build stops before publishing any split; each study's reason is in the log above"
            + (f", e.g. {first['file']}: {first['reason']}" if first else "") + ")")


def _processed(items: list, options: BuildOptions, ahead: int = 8) -> Iterator:
    """`process` of each item, in order, two studies at a time: reading (zlib, NPZ), resampling and encoding spend
    their time in numpy/zlib, which release the GIL, so threads use two cores (a compressed 600-study cohort builds
    in 32 s instead of 38 s). At most `ahead` studies' records wait in memory. Slices stay one at a time: a study's
    slices are yielded as they are made, never all held."""
    if options.spec.kind == "slices" or len(items) < 2:
        return (process(item, options) for item in items)
    return ordered_map(lambda item: list(process(item, options)), items, ahead=ahead)


def _worker_path() -> None:
    """Beam's multi-process DirectRunner starts fresh interpreters: make this checkout importable in them."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *paths])


class _ProcessFn:
    """Picklable by reference to this module (never to the builder module, which Beam workers cannot import)."""

    def __init__(self, options: BuildOptions):
        self.options = options

    def __call__(self, item: WorkItem):
        import apache_beam as beam

        for tag, value in process(item, self.options):
            if tag == "example":
                yield value
            else:
                yield beam.pvalue.TaggedOutput("quarantine", json.dumps(value, ensure_ascii=False, sort_keys=True))


def beam_examples(items: Iterable[WorkItem], options: BuildOptions, data_dir: str, split: str):
    """A PTransform (PBegin -> (key, example)) for TFDS's Beam path; quarantine parts go to `data_dir`."""
    import apache_beam as beam

    _worker_path()
    items = list(items)
    prefix = os.path.join(os.fspath(data_dir), f"{_PART_PREFIX}{split}")
    process_fn = _ProcessFn(options)

    class _Generate(beam.PTransform):
        def expand(self, pbegin):
            out = (pbegin
                   | "Items" >> beam.Create(items, reshuffle=True)
                   | "Process" >> beam.FlatMap(process_fn).with_outputs("quarantine", main="examples"))
            _ = out.quarantine | "Quarantine" >> beam.io.WriteToText(prefix, file_name_suffix=".jsonl")
            return out.examples

    return _Generate()


def write_quarantine(data_dir: str, records: list) -> list:
    """Merge in-memory records and Beam part files into one sorted quarantine.jsonl (atomically); returns it."""
    from etils import epath

    d = epath.Path(data_dir)
    merged = {json.dumps(r, ensure_ascii=False, sort_keys=True) for r in records}
    for part in sorted(d.glob(f"{_PART_PREFIX}*")):
        merged.update(line for line in part.read_text(encoding="utf-8").splitlines() if line.strip())
        part.unlink()
    lines = sorted(merged)
    tmp = d / (QUARANTINE + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.rename(d / QUARANTINE)
    return [json.loads(line) for line in lines]


def write_notes(data_dir: str, notes: dict) -> None:
    from etils import epath

    d = epath.Path(data_dir)
    tmp = d / (NOTES + ".tmp")
    tmp.write_text(json.dumps(notes, ensure_ascii=False, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    tmp.rename(d / NOTES)


def read_quarantine(dataset_dir: str) -> list[dict]:
    path = os.path.join(os.fspath(dataset_dir), QUARANTINE)
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
