"""``metalearn demo``: a Prototypical Network on scikit-learn's digits, end to end, offline, in ~a minute.

Meta-train on digits 0-4, meta-test 5-way 1-shot and 5-shot on the unseen digits 5-9, and compare with
1-nearest-neighbour on pixels evaluated on the very same test episodes.  Five training classes are few, so,
as with Omniglot's rotation classes, each training digit and its mirror image at 0/90/180/270 degrees are
separate classes (40 in all) and training episodes are 20-way.
"""
from __future__ import annotations

import math
import time

import torch

from metalearn.config import TrainConfig
from metalearn.data.digits import load_digits
from metalearn.data.storage import ClassImages
from metalearn.episodes import EpisodeSampler
from metalearn.learners.protonet import ProtoNet
from metalearn.nn import Conv4
from metalearn.train.evaluator import EvalResult, episode_accuracy, evaluate, mean_ci95
from metalearn.train.trainer import train


def _baseline(sampler: EpisodeSampler, episodes: int) -> tuple[float, float]:
    from metalearn.baselines import nearest_neighbour_logits
    accs = []
    for _ in range(math.ceil(episodes / sampler.batch_size)):
        ep = sampler.sample()
        accs.append(episode_accuracy(nearest_neighbour_logits(ep), ep.query_y))
    return mean_ci95(torch.cat(accs)[:episodes].numpy())


def _augmented(data: ClassImages) -> ClassImages:
    """Add each class's mirror image as a new class and turn on the four rotation classes."""
    labels = torch.repeat_interleave(torch.arange(data.num_base_classes), data.counts)
    images = torch.cat([data.images, data.images.flip(-1)])
    names = list(data.names) + [f"{n}-mirrored" for n in data.names]
    return ClassImages.from_labels(images, torch.cat([labels, labels + data.num_base_classes]), names,
                                   rotations=(0, 90, 180, 270))


DATASETS = ("omniglot", "digits")
DEMO_STEPS = {"omniglot": 800, "digits": 600}


def _splits(dataset: str) -> tuple[ClassImages, ClassImages, list[tuple[int, int]], TrainConfig]:
    """(train split, test split, test settings [(ways, shots)], the training recipe without steps)."""
    if dataset == "omniglot":
        from metalearn.data.bundled import load_bundled
        return (load_bundled("background", rotations=(0, 90, 180, 270)), load_bundled("evaluation"),
                [(5, 1), (20, 1)], TrainConfig(ways=60, shots=1, queries=5))
    if dataset == "digits":
        return (_augmented(load_digits("train")), load_digits("test"), [(5, 1), (5, 5)],
                TrainConfig(ways=20, shots=1, queries=5))
    raise ValueError(f"dataset: expected one of {list(DATASETS)}, got {dataset!r}")


def run_demo(out_dir: str, steps: int = 800, episodes: int = 600, seed: int = 0, progress: bool = True,
             dataset: str = "omniglot") -> dict:
    """Train a ProtoNet and evaluate it against a pixel 1-NN baseline on the same test episodes.

    Args:
        out_dir: The run directory of the training.
        steps: Training steps.
        episodes: Test episodes per setting.
        seed: The seed of the training and the episodes.
        progress: Show progress bars.
        dataset: ``"omniglot"`` (the bundled file) or ``"digits"``.

    Returns:
        ``{setting: {"protonet": (acc, ci), "pixel_1nn": (acc, ci)}, "_time": ...}``.
    """
    import dataclasses
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train_split, test_split, settings, recipe = _splits(dataset)
    cfg = dataclasses.replace(recipe, steps=steps, lr=1e-3, lr_step=max(1, steps // 2), val_every=0,
                              checkpoint_every=steps, log_every=max(1, steps // 20), seed=seed)
    from metalearn.engine import channels_last, fused_kernels
    learner = fused_kernels(channels_last(ProtoNet(Conv4(in_channels=1), check_support=False)))
    sampler = EpisodeSampler(train_split, cfg.ways, cfg.shots, cfg.queries, seed=seed)
    train(learner, sampler, cfg, out_dir, progress=progress, meta={"demo": dataset})
    t_train = time.perf_counter() - t0
    results = {}
    for ways, shots in settings:
        def test_sampler() -> EpisodeSampler:  # identical episodes for both methods
            return EpisodeSampler(test_split, ways, shots, 15, batch_size=10, seed=seed + 1000 + 37 * ways + shots)
        r: EvalResult = evaluate(learner, test_sampler(), episodes, progress=progress)
        results[f"{ways}-way {shots}-shot"] = {"protonet": (r.accuracy, r.ci95),
                                               "pixel_1nn": _baseline(test_sampler(), episodes)}
    results["_time"] = {"train_s": t_train, "total_s": time.perf_counter() - t0}
    results["_dataset"] = dataset
    return results


def format_results(results: dict, episodes: int) -> str:
    dataset = results.get("_dataset", "omniglot")
    where = ("the 20 Omniglot evaluation alphabets (characters never seen in training)" if dataset == "omniglot"
             else "the unseen digits 5-9")
    lines = [f"Meta-test on {where}, {episodes} episodes each, 15 queries per class, accuracy % ± 95% CI",
             f"{'setting':<16}{'ProtoNet (Conv4)':>20}{'1-NN on pixels':>20}"]
    for key, r in results.items():
        if key.startswith("_"):
            continue
        (pa, pc), (ba, bc) = r["protonet"], r["pixel_1nn"]
        lines.append(f"{key:<16}{pa:>13.2f} ± {pc:<4.2f}{ba:>13.2f} ± {bc:<4.2f}")
    if dataset == "digits":
        lines.append("(1-NN on pixels is a strong baseline on these clean, centred 8x8 digits; the ProtoNet has seen "
                     "only five training digits.)")
    t = results.get("_time", {})
    if t:
        lines.append(f"meta-training {t['train_s']:.0f} s, total {t['total_s']:.0f} s")
    return "\n".join(lines)
