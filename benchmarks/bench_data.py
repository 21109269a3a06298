"""Data throughput: dataset builds (studies/s, plain and Beam paths) and the Grain loader (examples/s, tokens/s per
host), at the tiny grid and at the paper's 140x480x480 grid, on synthetic cohorts written on the fly.

    python benchmarks/bench_data.py [--tiny-studies 24] [--paper-studies 2] [--workers 0 2] [--skip-paper]
                                    [--with-zlib] [--workdir DIR] [--json OUT]

Prints a markdown table. Build rows count each listed study once (studies in the expert set are also written to
test_expert, so a build writes slightly more than it lists). Loader rows time batches after one warm-up batch, with the loader's default read-ahead (2 threads, 4 batches).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BEAM = "runner=DirectRunner,direct_num_workers={n},direct_running_mode=multi_processing"


def bench_build(manual: str, data_dir: str, config: str, *, beam: bool, workers: int, **kw) -> dict:
    from jaxpetct.data.build import build_dataset

    s = build_dataset(manual, data_dir, config, beam=beam, beam_options=BEAM.format(n=workers) if beam else None,
                      progress=False, overwrite=True, **kw)
    return {"kind": "build", "config": s.config, "path": s.path + (f" ({workers} workers)" if beam else ""),
            "studies": s.studies_listed, "examples": sum(v for k, v in s.examples.items() if k != "test_expert"),
            "seconds": s.seconds, "studies_per_s": s.studies_per_second, "mib": s.bytes / 2**20,
            "dataset_dir": s.dataset_dir}


def bench_loader(dataset_dir: str, *, shape, batch_size: int, workers: int, batches: int) -> dict:
    from jaxpetct.data import pipeline

    cfg = pipeline.LoaderConfig(batch_size=batch_size, image=pipeline.ImageConfig(shape=tuple(shape)),
                                worker_count=workers, worker_buffer_size=2)
    ds = pipeline.make_dataset(pipeline.open_source(dataset_dir, "train"), "mistral-v1", cfg,
                               shard_index=0, shard_count=1)
    it = iter(ds)
    next(it)  # warm-up: worker start, tokenizer load, first reads
    start, tokens = time.perf_counter(), 0
    for _ in range(batches):
        b = next(it)
        tokens += int(b["attention_mask"].sum())
    seconds = time.perf_counter() - start
    if hasattr(it, "close"):
        it.close()
    n = batches * batch_size
    return {"kind": "loader", "grid": "x".join(map(str, shape)), "workers": workers, "batch": batch_size,
            "examples": n, "seconds": seconds, "examples_per_s": n / seconds, "tokens_per_s": tokens / seconds}


def table(rows: list[dict]) -> str:
    out = ["| what | config / grid | path / workers | studies | examples | seconds | studies/s | examples/s | "
           "tokens/s | MiB |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["kind"] == "build":
            out.append(f"| build | {r['config']} | {r['path']} | {r['studies']} | {r['examples']} | "
                       f"{r['seconds']:.1f} | {r['studies_per_s']:.3f} | | | {r['mib']:.1f} |")
        else:
            out.append(f"| loader | {r['grid']} (batch {r['batch']}) | {r['workers']} workers | | {r['examples']} | "
                       f"{r['seconds']:.1f} | | {r['examples_per_s']:.2f} | {r['tokens_per_s']:.0f} | |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny-studies", type=int, default=24)
    p.add_argument("--paper-studies", type=int, default=2)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2], help="loader worker counts to time")
    p.add_argument("--beam-workers", type=int, default=2)
    p.add_argument("--skip-paper", action="store_true")
    p.add_argument("--with-zlib", action="store_true", help="also time the zlib-encoded paper config")
    p.add_argument("--workdir", default=None, help="kept when given; a temporary folder otherwise")
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    args = p.parse_args(argv)
    import tensorflow_datasets as tfds

    tfds.disable_progress_bar()
    from jaxpetct.studies import synthetic

    work = args.workdir or tempfile.mkdtemp(prefix="bench_data_")
    rows = []
    try:
        tiny = synthetic.write_cohort(os.path.join(work, "tiny"), args.tiny_studies, 0, overwrite=True)
        plain = bench_build(tiny.root, os.path.join(work, "ds"), "regions", beam=False, workers=0)
        rows.append(plain)
        rows.append(bench_build(tiny.root, os.path.join(work, "ds_beam"), "regions", beam=True,
                                workers=args.beam_workers))
        for w in args.workers:
            rows.append(bench_loader(plain["dataset_dir"], shape=(32, 64, 64), batch_size=8, workers=w, batches=40))
        print(table(rows), flush=True)
        if not args.skip_paper:
            paper = synthetic.write_cohort(os.path.join(work, "paper"), args.paper_studies, 0, size="paper",
                                           overwrite=True)
            raw = bench_build(paper.root, os.path.join(work, "dsp"), "regions_paper", beam=False, workers=0)
            rows.append(raw)
            rows.append(bench_build(paper.root, os.path.join(work, "dsp_beam"), "regions_paper", beam=True,
                                    workers=args.beam_workers))
            for w in args.workers:
                rows.append(bench_loader(raw["dataset_dir"], shape=(140, 480, 480), batch_size=1, workers=w,
                                         batches=8))
            if args.with_zlib:
                zipped = bench_build(paper.root, os.path.join(work, "dspz"), "regions_paper", beam=False, workers=0,
                                     compress=True)
                rows.append(zipped)
                rows.append(bench_loader(zipped["dataset_dir"], shape=(140, 480, 480), batch_size=1, workers=0,
                                         batches=8))
                rows[-1]["grid"] += " zlib"
            print(table(rows))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
