"""MAML on a model you wrote yourself: wrap it with metalearn.Adaptable, adapt on the support set, meta-train.

The model below is an ordinary nn.Module (conv + BatchNorm + GroupNorm + an LSTM over the image rows + a
linear head); nothing in it knows about meta-learning.  The tasks are 5-way few-shot problems on scikit-learn's
digits (digits 0-4 for meta-training, 5-9 for meta-testing), so the script runs offline.

    python examples/maml_custom_model.py              # ~2 minutes on 2 CPU cores
    python examples/maml_custom_model.py --smoke      # a few seconds: a check that the example still runs
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn

from metalearn import Adaptable, EpisodeSampler
from metalearn.data.digits import load_digits
from metalearn.train.evaluator import mean_ci95


class RowLSTMNet(nn.Module):
    """A user's classifier: (N, 1, 16, 16) -> (N, ways)."""

    def __init__(self, ways: int, hidden: int = 32) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                  nn.MaxPool2d(2), nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.ReLU())
        self.rnn = nn.LSTM(input_size=16 * 8, hidden_size=hidden, batch_first=True)
        self.head = nn.Linear(hidden, ways)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)                                          # (N, 16, 8, 8)
        rows = z.permute(0, 2, 1, 3).flatten(2)                   # (N, 8 rows, 16*8)
        out, _ = self.rnn(rows)
        return self.head(out[:, -1])


def adapt_and_score(maml: Adaptable, sx, sy, qx, qy, steps: int, first_order: bool):
    """Adapt a view of the model on the support set; query loss and accuracy at the adapted parameters."""
    task = maml.clone()
    for _ in range(steps):
        task.adapt(F.cross_entropy(task(sx), sy), first_order=first_order)
    logits = task(qx)
    return F.cross_entropy(logits, qy), (logits.argmax(-1) == qy).float().mean().item() * 100


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ways", type=int, default=5)
    p.add_argument("--shots", type=int, default=1)
    p.add_argument("--queries", type=int, default=10)
    p.add_argument("--meta-batch", type=int, default=4)
    p.add_argument("--iterations", type=int, default=300)
    p.add_argument("--inner-lr", type=float, default=0.5)
    p.add_argument("--inner-steps", type=int, default=1)
    p.add_argument("--test-steps", type=int, default=3)
    p.add_argument("--test-episodes", type=int, default=200)
    p.add_argument("--first-order", action="store_true")
    p.add_argument("--smoke", action="store_true", help="tiny run that only checks the example works")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.smoke:
        args.iterations, args.test_episodes, args.meta_batch = 3, 5, 2

    torch.manual_seed(args.seed)
    train = EpisodeSampler(load_digits("train"), args.ways, args.shots, args.queries, batch_size=args.meta_batch,
                           seed=args.seed)
    test = EpisodeSampler(load_digits("test"), args.ways, args.shots, args.queries, batch_size=1,
                          seed=args.seed + 1)

    model = RowLSTMNet(args.ways)
    maml = Adaptable(model, lr=args.inner_lr)                    # the wrapper: no copies, no patching
    opt = torch.optim.Adam(maml.parameters(), lr=1e-3)

    for it in range(1, args.iterations + 1):
        ep = train.sample()
        opt.zero_grad()
        accs = []
        for b in range(args.meta_batch):                          # one view per task
            loss, acc = adapt_and_score(maml, ep.support_x[b], ep.support_y[b], ep.query_x[b], ep.query_y[b],
                                        args.inner_steps, args.first_order)
            (loss / args.meta_batch).backward()                   # meta-gradient reaches model.parameters()
            accs.append(acc)
        opt.step()
        if it % 50 == 0 or it == args.iterations:
            print(f"iteration {it}: query accuracy after adaptation {sum(accs) / len(accs):.1f}%", flush=True)

    accs = []
    for _ in range(args.test_episodes):                           # unseen digits 5-9
        ep = test.sample()[0]
        _, acc = adapt_and_score(maml, ep.support_x, ep.support_y, ep.query_x, ep.query_y, args.test_steps,
                                 first_order=True)
        accs.append(acc)
    mean, ci = mean_ci95(accs)
    print(f"meta-test {args.ways}-way {args.shots}-shot on digits 5-9: {mean:.2f} ± {ci:.2f}% "
          f"({len(accs)} episodes, {args.test_steps} inner steps)")


if __name__ == "__main__":
    main()
