"""Cost of the shape maps (targets of ``--method shape``) as a fraction of the training step.

Issue 14's bar: the maps for a batch cost <= 20 % of the step on a CPU, or they move to the
loader workers. Measured in one process, interleaved rounds, median of each: the maps alone
(:func:`selma3d.ssl.shape_maps.shape_maps`), the whole shape step (maps + masked view + forward +
backward + AdamW) and, for scale, the bare BYOL step on the same batch and backbone.

    .venv/bin/python benchmarks/shape_maps_bench.py [--batch-size 4] [--patch 32] [--scales 1,2]
        [--features 8,16,32] [--rounds 10] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_fn(method, batch):
    optimizer = torch.optim.AdamW([p for p in method.parameters() if p.requires_grad], lr=1e-4)

    def step():
        loss, _ = method.training_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.on_after_step(1, 100)
    return step


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--patch", type=int, default=32)
    parser.add_argument("--scales", default="1,2")
    parser.add_argument("--features", default="8,16,32")
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from selma3d.ssl import build_method
    from selma3d.ssl.shape_maps import shape_maps

    torch.manual_seed(0)
    scales = tuple(float(s) for s in args.scales.split(","))
    features = [int(f) for f in args.features.split(",")]
    size = (args.patch,) * 3
    batch = {"image": torch.randn(args.batch_size, 1, *size).clamp(-1, 1),
             "structure": torch.arange(args.batch_size) % 2}
    shape = build_method("shape", model_options={"features": features}, patch_size=size, num_structures=2,
                         scales=scales, structure_types=["spot", "tree"])
    byol = build_method("byol", model_options={"features": features}, patch_size=size, num_structures=2)
    runs = {"maps": lambda: shape_maps(batch["image"], scales), "shape step": step_fn(shape, batch),
            "byol step": step_fn(byol, batch)}
    for fn in runs.values():  # warm-up
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            times[name].append(timed(fn))
    median = {name: statistics.median(v) for name, v in times.items()}
    print(f"batch {args.batch_size} x {args.patch}^3, scales {scales}, unet3d {features}, "
          f"threads {torch.get_num_threads()}, {args.rounds} rounds (median s)")
    for name, value in median.items():
        print(f"  {name:11s} {value:.4f} s")
    print(f"  maps / shape step = {median['maps'] / median['shape step']:.1%}  "
          f"maps / byol step = {median['maps'] / median['byol step']:.1%}  "
          f"shape step / byol step = {median['shape step'] / median['byol step']:.2f}x")


if __name__ == "__main__":
    main()
