"""Learn an optimizer, then use it like torch.optim (Andrychowicz et al. 2016), in a few lines of library code.

1. Meta-train a coordinatewise LSTM optimizer on a family of small MLPs on MNIST (each optimisee: fresh init,
   its own minibatches of 128, 100 steps in truncated unrolls of 20).
2. Save it with its config, load it back.
3. Train your own nn.Module with it (step / zero_grad), beside Adam, and compare.

    METALEARN_DATA=../shared/data python examples/lstm_optimizer.py            # a few minutes on a CPU
    METALEARN_DATA=../shared/data python examples/lstm_optimizer.py --smoke    # seconds: a check that it runs
"""
import argparse
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import metalearn as ml
from metalearn.data.mnist import load_mnist


def train_module(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, steps: int,
                 seed: int) -> list[float]:
    """Plain PyTorch training loop; the optimizer is whatever you pass."""
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        idx = torch.randint(0, x.shape[0], (128,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--iterations", type=int, default=60, help="meta-training trajectories")
    p.add_argument("--smoke", action="store_true", help="tiny setting for CI")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    iterations, steps, unroll, n = (2, 10, 5, 3000) if args.smoke else (args.iterations, 100, 20, 60000)

    images, labels = load_mnist("train")                            # uint8 (60000, 28, 28), $METALEARN_DATA/mnist
    images, labels = images[:n], labels[:n]
    cut = n * 5 // 6
    train_family = ml.MLPFamily(images[:cut], labels[:cut], hidden=(20,), activation="sigmoid")
    val_family = ml.MLPFamily(images[cut:], labels[cut:], hidden=(20,), activation="sigmoid")

    # 1. meta-train: Adam on the LSTM's weights, meta-loss = sum of the optimisee's losses over each unroll
    net = ml.LSTMOptimizer(hidden_size=20, num_layers=2, preprocess_p=10.0, output_scale=0.1)
    cfg = ml.MetaTrainConfig(steps=steps, unroll=unroll, optimisees=1, iterations=iterations, lr=3e-3,
                             val_every=max(1, iterations // 4), val_optimisees=2 if args.smoke else 8)
    out = Path(tempfile.mkdtemp(prefix="lstm-optimizer-"))
    result = ml.meta_train(net, train_family, cfg, out_dir=out, val_family=val_family)
    print(f"meta-trained: best validation mean loss {result.best_val:.4f} at iteration {result.best_iteration}, "
          f"{result.steps_per_second:.1f} optimisee steps/s")

    # 2. save / load with its config (meta_train already wrote the best weights to out/best.pt)
    net.save(out / "lstm_opt.pt")
    learned = ml.LSTMOptimizer.load(out / "lstm_opt.pt")
    print(f"saved and reloaded {out / 'lstm_opt.pt'}: {learned.config}")

    # 3. your own nn.Module, trained with the learned optimizer like any torch.optim optimizer
    x = images[cut:].reshape(-1, 784).float() / 255.0
    y = labels[cut:]
    results = {}
    for name in ("LSTM", "Adam"):
        torch.manual_seed(1)
        model = nn.Sequential(nn.Linear(784, 20), nn.Sigmoid(), nn.Linear(20, 10))
        opt = ml.LearnedOptimizer(model.parameters(), learned) if name == "LSTM" else \
            torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = train_module(model, opt, x, y, steps, seed=2)
        results[name] = sum(losses[-10:]) / 10
        print(f"{name:5s} mean training loss over the last 10 of {steps} steps: {results[name]:.4f}")

    # the functional interface, for loops that keep parameters as dicts (no module state)
    params = {k: v.detach() for k, v in model.named_parameters()}
    state = learned.init(params)
    grads = {k: torch.zeros_like(v) for k, v in params.items()}
    updates, state = learned.update(grads, state)                   # updates[k]: same shape and dtype
    params = ml.apply_updates(params, updates)
    print("functional update ok:", {k: tuple(v.shape) for k, v in updates.items()})


if __name__ == "__main__":
    main()
