"""Speed of standard TTT: images adapted per second, batched (vmap over images) vs the per-image loop.

Both run in the same process on the same model and test images: the per-image loop of the original code
(:func:`metalearn.ttt.ttt_loop`: reload the weights, torch.optim.SGD, backward, step) on the first
``--loop-images`` images, and the batched version (:func:`metalearn.ttt.ttt`, ``--chunk-size`` images adapted at
once) on ``--images`` images.  Reports the rates, their ratio, and whether the predictions of the images both
ran on agree (with the largest logit difference).  Recipe: ResNet-26 GN, 10 steps, 32 copies, lr 1e-3.

  python benchmarks/ttt_speed.py --device cuda --images 1024 --loop-images 64 --chunk-size 128 --json out.json
  python benchmarks/ttt_speed.py --device cpu --threads 1 --images 8 --loop-images 4 --chunk-size 8
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from metalearn.nn.resnet_cifar import ResNetCIFAR  # noqa: E402
from metalearn.ttt import load_model, ttt, ttt_loop  # noqa: E402


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _commit() -> str:
    """Short commit of the checkout (``metalearn.bench.git_state``), marked when the tree is dirty."""
    from metalearn.bench import git_state
    state = git_state()
    if not state["commit"]:
        return "unknown"
    return state["commit"][:7] + (" (dirty)" if state["dirty"] else "")


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--checkpoint", default=None, help="a ttt run's last.pt (default: a freshly initialised model)")
    p.add_argument("--depth", type=int, default=26)
    p.add_argument("--norm", default="gn", choices=["gn", "bn"])
    p.add_argument("--images", type=int, default=256, help="images for the batched run")
    p.add_argument("--loop-images", type=int, default=16, help="images for the per-image loop (a prefix)")
    p.add_argument("--chunk-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--copies", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--json", default=None, metavar="FILE", help="write the result object to FILE")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.loop_images > args.images:
        p.error(f"--loop-images ({args.loop_images}) must be <= --images ({args.images})")
    dev = torch.device(args.device)
    if args.checkpoint:
        model, _ = load_model(args.checkpoint, map_location=dev)
    else:
        torch.manual_seed(0)
        model = ResNetCIFAR(args.depth, norm=args.norm).to(dev).eval()
    try:
        from metalearn.data.cifar10 import load_cifar10
        x = load_cifar10(split="test")[0][:args.images]
        data = f"CIFAR-10 test images 0..{args.images - 1}"
    except (FileNotFoundError, ImportError):
        x = torch.randint(0, 256, (args.images, 3, 32, 32), generator=torch.Generator().manual_seed(0),
                          dtype=torch.uint8)
        data = "synthetic uint8 images"
    x = x.to(dev)
    kw = dict(steps=args.steps, lr=args.lr, copies=args.copies)

    # warm-up (allocator, cuDNN autotuning): one small call of each, untimed
    ttt(model, x[:min(2, args.images)], chunk_size=args.chunk_size, **kw)
    ttt_loop(model, x[:1], **kw)

    _sync(dev)
    t0 = time.perf_counter()
    loop = ttt_loop(model, x[:args.loop_images], **kw)
    _sync(dev)
    t_loop = time.perf_counter() - t0
    t0 = time.perf_counter()
    batched = ttt(model, x, chunk_size=args.chunk_size, **kw)
    _sync(dev)
    t_batched = time.perf_counter() - t0

    n = args.loop_images
    agree = int((batched.predictions[:n] == loop.predictions).sum())
    res = {
        "device": str(dev), "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else
        (platform.processor() or platform.machine()), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "commit": _commit(), "command": " ".join(["python", *sys.argv]),
        "data": data, "model": f"ResNet-{model.depth} {model.norm.upper()}", "checkpoint": args.checkpoint,
        "steps": args.steps, "copies": args.copies, "chunk_size": args.chunk_size,
        "loop_images": n, "loop_s": t_loop, "loop_images_per_s": n / t_loop,
        "batched_images": args.images, "batched_s": t_batched, "batched_images_per_s": args.images / t_batched,
        "speedup": (args.images / t_batched) / (n / t_loop),
        "predictions_agree": f"{agree}/{n}",
        "max_logit_diff": float((batched.logits[:n] - loop.logits).abs().max()),
    }
    if dev.type == "cuda":
        res["max_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2 ** 30
    print(f"{res['model']} on {res['device_name']} ({res['device']}, {res['threads']} threads), {data}")
    print(f"  per-image loop: {n} images in {t_loop:.1f} s = {res['loop_images_per_s']:.3f} images/s")
    print(f"  batched (chunk {args.chunk_size}): {args.images} images in {t_batched:.1f} s = "
          f"{res['batched_images_per_s']:.3f} images/s")
    print(f"  speed-up {res['speedup']:.2f}x; predictions agree on {res['predictions_agree']}, "
          f"max logit difference {res['max_logit_diff']:.2e}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=1) + "\n")
    return res


if __name__ == "__main__":
    main()
