"""Test-Time Training on CIFAR-10-C: train a ResNet with a rotation head, then adapt it on corrupted test images.

Joint training (classes + rotations), then on one corruption at severity 5:
  source      the trained model, no adaptation
  TTT         per image: 10 SGD steps on the rotation loss of 32 augmented copies, weights reset for each image
              (all images adapted at once: each has its own copy of the trunk, vmapped)
  TTT-Online  1 step per image, weights carried along the stream
  Tent        entropy minimisation of the norm layers' affine parameters, batch by batch

Uses the real CIFAR-10 test images when $METALEARN_DATA has cifar10/ (else synthetic images, say so).
A real run wants a GPU and the full recipe (metalearn ttt train --config tasks/ttt_cifar10_gn.yaml); this script
trains for --train-steps only, so its errors say that the pipeline works, not what TTT achieves.

  python examples/ttt_cifar10c.py --smoke                       # tiny: a few seconds on a CPU
  python examples/ttt_cifar10c.py --device cuda --train-steps 2000 --images 1000
"""
import argparse
import os
import time
from pathlib import Path

import torch

from metalearn.nn.resnet_cifar import ResNetCIFAR
from metalearn.ttt import JointTrainConfig, predict, tent, train_joint, ttt, ttt_loop, ttt_online


def load_data(n_train: int, n_test: int, corruption: str, device: torch.device):
    """(train x, train y, corrupted test x, test y, description); synthetic if CIFAR-10 is not available."""
    root = os.environ.get("METALEARN_DATA")
    if root and (Path(root) / "cifar10").is_dir():
        from metalearn.data.cifar10 import load_cifar10
        from metalearn.data.corruptions import corrupt
        xtr, ytr = load_cifar10(split="train")
        xte, yte = load_cifar10(split="test")
        xc = corrupt(xte[:n_test].to(device), corruption, 5)
        return (xtr[:n_train].to(device), ytr[:n_train].to(device), xc, yte[:n_test].to(device),
                f"CIFAR-10 test images 0..{n_test - 1}, {corruption} severity 5")
    print("METALEARN_DATA has no cifar10/: using synthetic images (set it for the real data)")
    g = torch.Generator().manual_seed(0)
    xtr = torch.randint(0, 256, (n_train, 3, 32, 32), generator=g, dtype=torch.uint8)
    xte = torch.randint(0, 256, (n_test, 3, 32, 32), generator=g, dtype=torch.uint8)
    ytr, yte = (torch.randint(0, 10, (n,), generator=g) for n in (n_train, n_test))
    return xtr.to(device), ytr.to(device), xte.to(device), yte.to(device), "synthetic images"


def error(logits: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(-1) != y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny model and data (CI)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--corruption", default="gaussian_noise")
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--images", type=int, default=200, help="first N test images")
    p.add_argument("--out", default="runs/example-ttt", help="run directory of the joint training")
    args = p.parse_args()
    torch.manual_seed(0)
    if args.smoke:
        torch.set_num_threads(1)
    dev = torch.device(args.device)
    depth, steps, copies = (8, 2, 4) if args.smoke else (26, 10, 32)
    n_train, n_test = (64, 8) if args.smoke else (50000, args.images)
    train_steps = 2 if args.smoke else args.train_steps
    xtr, ytr, x, y, what = load_data(n_train, n_test, args.corruption, dev)

    # 1. joint training: CE(classes) + CE(rotations) on every image at all four rotations
    model = ResNetCIFAR(depth, norm="gn").to(dev)
    cfg = JointTrainConfig(batch_size=16 if args.smoke else 128, max_steps=train_steps,
                           log_every=max(1, train_steps // 4))
    out = Path(args.out) / time.strftime("%Y%m%d-%H%M%S")
    t0 = time.perf_counter()
    st = train_joint(model, xtr, ytr, cfg, out, progress=lambda m: print(
        f"  step {m['step']}: loss {m['loss']:.3f} (classes {m['main']:.3f}, rotations {m['rotation']:.3f})"))
    print(f"joint training: {st.step} steps in {time.perf_counter() - t0:.1f} s, checkpoint {out / 'last.pt'}")
    model.eval()

    # 2. test time, on the corrupted stream
    print(f"test stream: {what} ({x.shape[0]} images)")
    print(f"source      error {error(predict(model, x), y):5.1f}%")
    t0 = time.perf_counter()
    res = ttt(model, x, steps=steps, copies=copies, chunk_size=64)
    print(f"TTT         error {error(res.logits, y):5.1f}%  ({x.shape[0] / (time.perf_counter() - t0):.1f} images/s, "
          f"rotation loss {res.losses[:, 0].mean():.3f} -> {res.losses[:, -1].mean():.3f})")
    ref = ttt_loop(model, x[:2], steps=steps, copies=copies)            # the one-image-at-a-time reference
    same = bool((ref.predictions == res.predictions[:2]).all())
    print(f"batched TTT == sequential loop on the first 2 images: {same} "
          f"(max logit difference {(ref.logits - res.logits[:2]).abs().max():.1e})")
    print(f"TTT-Online  error {error(ttt_online(model, x, copies=copies).logits, y):5.1f}%")
    print(f"Tent        error {error(tent(model, x, batch_size=128).logits, y):5.1f}%  (GroupNorm affine parameters)")
    if not same:
        raise SystemExit("batched TTT disagrees with the sequential loop")


if __name__ == "__main__":
    main()
