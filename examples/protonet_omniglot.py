"""Prototypical Networks on Omniglot in a few lines of library code (no CLI, no YAML).

    METALEARN_DATA=../shared/data python examples/protonet_omniglot.py            # 5-way 1-shot, 2000 episodes
    METALEARN_DATA=../shared/data python examples/protonet_omniglot.py --smoke    # seconds: a check that it runs
"""
import argparse
import tempfile

import torch

import metalearn as ml
from metalearn.config import TrainConfig
from metalearn.data.omniglot import load_omniglot


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--smoke", action="store_true", help="tiny setting for CI")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    steps, test_episodes, train_ways, val_episodes = (5, 20, 20, 10) if args.smoke else (args.steps, 1000, 60, 200)

    train_split = load_omniglot(split="train").to(device)   # 1028 characters x 4 rotations, uint8 28x28
    val_split = load_omniglot(split="val").to(device)
    test_split = load_omniglot(split="test").to(device)

    learner = ml.ProtoNet(ml.Conv4(in_channels=1)).to(device)
    sampler = ml.EpisodeSampler(train_split, ways=train_ways, shots=1, queries=5, seed=0)
    cfg = TrainConfig(ways=train_ways, shots=1, queries=5, steps=steps, lr_step=max(1, steps // 2),
                      val_every=max(1, steps // 4), val_episodes=val_episodes, checkpoint_every=steps)
    out = tempfile.mkdtemp(prefix="protonet-omniglot-")
    state = ml.train(learner, sampler, cfg, out, progress=not args.smoke,
                     val_sampler_fn=lambda: ml.EpisodeSampler(val_split, 5, 1, 15, batch_size=10, seed=1))
    print(f"best validation accuracy {state.best_accuracy:.2f}% at step {state.best_step} (run in {out})")

    for ways in (5, 20):
        test = ml.EpisodeSampler(test_split, ways=ways, shots=1, queries=15, batch_size=10, seed=2)
        print(f"test {ways}-way 1-shot: {ml.evaluate(learner, test, episodes=test_episodes)}")


if __name__ == "__main__":
    main()
