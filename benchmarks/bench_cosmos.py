"""jaxpetct vs diffusers: Cosmos tokenizer encode throughput (volumes/s) on this machine's CPU, same weights.

Why: the Cosmos CV8x8x8 tokenizer (jaxpetct/models/cosmos) will encode every PET/CT volume a VLM sees; this
measures what one encode costs here against the reference it was ported from, in one run:

- jaxpetct: `CosmosTokenizer.encode` under `jax.jit` (compilation timed apart as `first_s`), float32;
- diffusers: `AutoencoderKLCosmos.encode(x).latent_dist.mode()` in `torch.inference_mode()`, float32, with
  `--threads` intra-op threads (XLA's CPU client uses its own pool over all cores: 2 here, so keep 2).

Both sides get the same random weights (diffusers' init, norms perturbed, copied with `cosmos.from_state_dict`)
and the same (1, 3, T, H, W) volume in [-1, 1]; each row reports the median seconds per encode, volumes/s, the
speed-up (torch s / jaxpetct s) and the latents' max relative difference. Grids are T x H x W slices:
32x64x64 is the demo's region grid, 120x256x256 a whole resampled study (slow on a CPU: a few repeats).
Run it on an otherwise idle machine: torch's OpenMP threads slow down many-fold when another process takes a core.

    python benchmarks/bench_cosmos.py --json runs/bench_cosmos.json          # both grids, CV8x8x8 widths
    python benchmarks/bench_cosmos.py --quick                                # 32x64x64 only, 1 repeat
    python benchmarks/bench_cosmos.py --config tiny --grids 9x16x16 --repeats 1 --warmup 0   # seconds
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", choices=("cv8x8x8", "tiny"), default="cv8x8x8", help="channel widths")
    p.add_argument("--grids", default="32x64x64,120x256x256", help="comma-separated TxHxW volumes")
    p.add_argument("--repeats", type=int, default=3, help="timed encodes per side and grid (median reported)")
    p.add_argument("--big-repeats", type=int, default=1,
                   help="timed encodes for grids over 1M voxels (no warm-up beyond the first, untimed encode)")
    p.add_argument("--warmup", type=int, default=1, help="untimed encodes per side after the first (compiling) one")
    p.add_argument("--quick", action="store_true", help="the first grid only, 1 repeat, no warm-up")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    a.grids = [tuple(int(n) for n in g.split("x")) for g in a.grids.split(",") if g]
    if any(len(g) != 3 for g in a.grids):
        p.error("--grids takes TxHxW, e.g. 32x64x64")
    if a.quick:
        a.grids, a.repeats, a.big_repeats, a.warmup = a.grids[:1], 1, 1, 0
    return a


def models(a):
    """The diffusers model (random weights, norms perturbed so they matter) and ours with the same weights."""
    import torch
    from diffusers import AutoencoderKLCosmos

    from jaxpetct.models import cosmos

    cfg = cosmos.CosmosConfig.cv8x8x8() if a.config == "cv8x8x8" else cosmos.CosmosConfig.tiny()
    kwargs = {k: v for k, v in cfg.to_diffusers().items() if not k.startswith("_")}
    torch.manual_seed(a.seed)
    vae = AutoencoderKLCosmos(**kwargs).eval()
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if ".norm." in name:
                param.copy_(torch.randn_like(param) * 0.1 + float(name.endswith("weight")))
    return cfg, vae, cosmos.from_state_dict(vae.state_dict(), cfg)


def timed(run, warmup: int, repeats: int) -> dict:
    """`run()` returns a host array; the first call (compilation included) is timed apart."""
    t0 = time.perf_counter()
    out = run()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "first_s": first, "out": out}


def measure(grid, cfg, vae, ours, a) -> dict:
    import torch

    t, h, w = grid
    x = np.random.default_rng(a.seed).uniform(-1, 1, (1, t, h, w, cfg.in_channels)).astype(np.float32)
    big = t * h * w > 1_000_000
    repeats, warmup = (a.big_repeats, 0) if big else (a.repeats, a.warmup)
    graphdef, state = nnx.split(ours)
    encode = jax.jit(lambda state, x: nnx.merge(graphdef, state).encode(x))
    xj = jax.device_put(x)
    jax_side = timed(lambda: np.asarray(encode(state, xj)), warmup, repeats)
    x_torch = torch.from_numpy(x).permute(0, 4, 1, 2, 3).contiguous()

    def torch_encode():
        with torch.inference_mode():
            return vae.encode(x_torch).latent_dist.mode().permute(0, 2, 3, 4, 1).numpy()

    torch_side = timed(torch_encode, warmup, repeats)
    ref = torch_side.pop("out")
    err = float(np.abs(jax_side.pop("out") - ref).max() / np.abs(ref).max())
    return {"grid": f"{t}x{h}x{w}", "config": a.config, "latent": list(cfg.latent_shape(t, h, w)),
            "repeats": repeats, "warmup": warmup, "torch_threads": torch.get_num_threads(),
            "xla_device": jax.devices()[0].device_kind, "jaxpetct_s": jax_side["s"],
            "jaxpetct_first_s": jax_side["first_s"], "diffusers_s": torch_side["s"],
            "diffusers_first_s": torch_side["first_s"], "jaxpetct_volumes_per_s": 1.0 / jax_side["s"],
            "diffusers_volumes_per_s": 1.0 / torch_side["s"], "speedup": torch_side["s"] / jax_side["s"],
            "max_rel_diff": err}


def table(rows: list[dict]) -> str:
    lines = ["| grid | latent | jaxpetct s | diffusers s | jaxpetct vol/s | diffusers vol/s | speed-up | "
             "jaxpetct 1st call s (compile) | max rel diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['grid']} | {'x'.join(map(str, r['latent']))} | {r['jaxpetct_s']:.3f} | "
                     f"{r['diffusers_s']:.3f} | {r['jaxpetct_volumes_per_s']:.3f} | "
                     f"{r['diffusers_volumes_per_s']:.3f} | {r['speedup']:.2f}x | {r['jaxpetct_first_s']:.1f} | "
                     f"{r['max_rel_diff']:.1e} |")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    import torch

    a = parse(argv)
    torch.set_num_threads(a.threads)
    cfg, vae, ours = models(a)
    rows = [measure(grid, cfg, vae, ours, a) for grid in a.grids]
    print(f"Cosmos {a.config} encode, batch 1, float32, torch threads {a.threads}; speed-up = diffusers s / "
          f"jaxpetct s")
    print(table(rows))
    if a.json:
        from jaxpetct.atomic import write_text

        write_text(a.json, json.dumps(rows, indent=1))
    return rows


if __name__ == "__main__":
    main()
