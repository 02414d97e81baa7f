"""Running a distillation: the outer loop with checkpoints and exact resume, evaluation, the paper's baselines
(random real images, k-means centres of real images) and the PNG outputs.

A run directory holds ``config.yaml`` (resolved), ``metrics.jsonl`` (one line per evaluation), ``last.pt``
(everything needed to continue: distilled images, raw step sizes, Adam, the RNG, the step), and at the end
``distilled.pt`` (images, labels, step sizes), ``distilled.png`` (the image grid), ``curve.png`` and
``result.json``. ``resume=True`` continues from ``last.pt`` and gives the same numbers as an uninterrupted run.

Data (``dataset: mnist`` or ``cifar10``): the last ``val_images`` training images are the validation split (the
learning curve, the baselines' step-size tuning); distillation and the baselines draw from the others;
accuracies at the end are on the test split (all of it: the project's shared copy of MNIST holds the first 3000
official MNIST test images, CIFAR-10 all 10000). The image shape and the per-channel normalisation come from the
data (`DistillData`, `NORMALIZATION`): MNIST 1x28x28 with its mean 0.1307 and std 0.3081, CIFAR-10 3x32x32 with
`metalearn.data.cifar10`'s per-channel mean and std.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor, nn

from metalearn.config import ConfigError, load_yaml
from metalearn.data.cache import atomic_write
from metalearn.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD
from metalearn.data.cifar10 import CLASSES as CIFAR10_CLASSES
from metalearn.distill.alexcifarnet import AlexCifarNet
from metalearn.distill.config import RESUME_FREE, DistillConfig, dump_distill_config
from metalearn.distill.core import (accuracy, distill_loss, distilled_labels, inverse_softplus, mean_std,
                                    step_lrs, train_and_score)
from metalearn.distill.lenet import LeNet, init_params
from metalearn.train.checkpoint import atomic_save, load_checkpoint

KIND = "distill"
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081
CLASSES = 10
#: per-channel (mean, std) of the pixels in [0, 1], by dataset
NORMALIZATION = {"mnist": ((MNIST_MEAN,), (MNIST_STD,)), "cifar10": (CIFAR10_MEAN, CIFAR10_STD)}
#: how titles name each dataset, and its class names (the grid's column titles)
DATASET_NAMES = {"mnist": "MNIST", "cifar10": "CIFAR-10"}
CLASS_NAMES = {"mnist": tuple(str(c) for c in range(CLASSES)), "cifar10": CIFAR10_CLASSES}
#: reflection padding of the real-batch augmentation (``augment: true``)
AUGMENT_PAD = 4


@dataclass
class DistillData:
    """uint8 training images of the distillation split, normalised validation and test tensors.

    Attributes:
        train_x: uint8 (N, C, H, W), the distillation split.
        train_y: Its labels.
        val_x: float32, normalised: the validation split.
        val_y: Its labels.
        test_x: float32, normalised: the test split.
        test_y: Its labels.
        mean: Per-channel means of the normalisation (pixels in [0, 1]).
        std: Per-channel standard deviations.
    """
    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    mean: tuple
    std: tuple

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        return tuple(self.train_x.shape[1:])

    def batch(self, idx: Tensor) -> Tensor:
        """The training images ``idx``, normalised (float32)."""
        return normalize(self.train_x[idx], self.mean, self.std)


def normalize(x: Tensor, mean: tuple, std: tuple) -> Tensor:
    """uint8 images (N, C, H, W) -> float32, standardised per channel: ``(x / 255 - mean[c]) / std[c]``.

    Args:
        x: uint8 images, one ``mean`` / ``std`` per channel (axis 1).
        mean: Per-channel means (pixels in [0, 1]).
        std: Per-channel standard deviations.

    Returns:
        The float32 images.

    Raises:
        ConfigError: ``x`` does not have one channel per mean.
    """
    if x.dim() != 4 or x.shape[1] != len(mean) or len(mean) != len(std):
        raise ConfigError(f"images: expected (N, {len(mean)}, H, W) for a {len(mean)}-channel normalisation, "
                          f"got shape {tuple(x.shape)}")
    x = x.float() / 255.0
    if len(mean) == 1:                      # one channel: plain scalars (bit-identical to the MNIST-only code)
        return (x - mean[0]) / std[0]
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return (x - m) / s


def denormalize(x: Tensor, mean: tuple, std: tuple) -> Tensor:
    """Normalised images (..., C, H, W) back to pixels in [0, 1] (clamped), the inverse of `normalize`.

    Args:
        x: Normalised images, one ``mean`` / ``std`` per channel (axis -3).
        mean: Per-channel means.
        std: Per-channel standard deviations.

    Returns:
        float32 pixels in [0, 1].
    """
    m = torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
    return (x.detach().float() * s + m).clamp(0, 1)


def augment_batch(x: Tensor, generator: torch.Generator, pad: int = AUGMENT_PAD) -> Tensor:
    """Random crop of the reflection-padded images and random horizontal flip, one draw per image.

    The training transform of the authors' CIFAR-10 loader (``Pad(4, reflect)``, ``RandomCrop(32)``,
    ``RandomHorizontalFlip``), applied to normalised images (reflection padding commutes with the per-channel
    normalisation).

    Args:
        x: (N, C, H, W) images.
        generator: The draws (row and column offsets in [0, 2 pad], flips) come from it.
        pad: The reflection padding.

    Returns:
        (N, C, H, W) augmented images (a new tensor).
    """
    n, c, h, w = x.shape
    off = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flip = torch.randint(0, 2, (n,), generator=generator).bool()
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")
    rows = off[:, :1] + torch.arange(h)                                # (N, H)
    cols = off[:, 1:] + torch.arange(w)                                # (N, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    idx = torch.arange(n)[:, None, None, None]
    ch = torch.arange(c)[None, :, None, None]
    return padded[idx, ch, rows[:, None, :, None], cols[:, None, None, :]]


def _load_split(cfg: DistillConfig, split: str) -> tuple[Tensor, Tensor]:
    """uint8 (N, C, H, W) images and int64 labels of one split of ``cfg.dataset``."""
    if cfg.dataset == "cifar10":
        from metalearn.data.cifar10 import load_cifar10
        return load_cifar10(cfg.data_root, split)
    from metalearn.data.mnist import load_mnist
    x, y = load_mnist(split, cfg.data_root)
    return x.unsqueeze(1), y


def load_data(cfg: DistillConfig) -> DistillData:
    """The training (minus the validation hold-out), validation and test splits of ``cfg.dataset``.

    Args:
        cfg: The distillation config (``dataset``, ``data_root``, ``val_images``, the budget per class).

    Returns:
        The data, normalised with the dataset's own per-channel mean and std.

    Raises:
        ConfigError: ``val_images`` leaves no training image, or a class has fewer training images than the
            baselines need.
    """
    x, y = _load_split(cfg, "train")
    xt, yt = _load_split(cfg, "test")
    if cfg.val_images >= x.shape[0]:
        raise ConfigError(f"val_images: {cfg.val_images} but the training split has {x.shape[0]} images")
    n = x.shape[0] - cfg.val_images
    counts = torch.bincount(y[:n], minlength=CLASSES)
    per = cfg.images_per_class * cfg.steps
    if int(counts.min()) < per:
        raise ConfigError(f"images_per_class x steps = {per} real images per class are needed by the baselines, "
                          f"but a class has only {int(counts.min())} in the distillation split")
    mean, std = NORMALIZATION[cfg.dataset]
    return DistillData(x[:n], y[:n], normalize(x[n:], mean, std), y[n:], normalize(xt, mean, std), yt,
                       mean=mean, std=std)


def build_model(cfg: DistillConfig, image_shape: tuple[int, int, int]) -> nn.Module:
    """The network of ``cfg.arch`` for images of ``image_shape``.

    Args:
        cfg: The distillation config.
        image_shape: (C, H, W) of the data (`DistillData.image_shape`).

    Returns:
        LeNet or AlexCifarNet with 10 classes.
    """
    c, h, _ = image_shape
    if cfg.arch == "alexcifarnet":
        return AlexCifarNet(channels=c, size=h, classes=CLASSES)
    return LeNet(channels=c, size=h, classes=CLASSES)


def _eval_inits(cfg: DistillConfig, model: nn.Module, which: str) -> list[dict]:
    """The initialisations an evaluation trains from.

    Args:
        cfg: The distillation config: the fixed init, or ``eval_models`` held-out random ones (their own seeds,
            never seen in training).
        model: The network.
        which: ``"val"`` or ``"test"``: each gives a different set of random inits.
    """
    if cfg.init == "fixed":
        return [fixed_init(cfg, model)]
    g = torch.Generator().manual_seed(cfg.seed + (1_000 if which == "val" else 2_000))
    return [init_params(model, cfg.init_scheme, g) for _ in range(cfg.eval_models)]


def fixed_init(cfg: DistillConfig, model: nn.Module) -> dict:
    return init_params(model, cfg.init_scheme, torch.Generator().manual_seed(cfg.seed + 1))


def score(cfg: DistillConfig, model: nn.Module, inits: list[dict], images: Tensor, lrs: Tensor, x: Tensor,
          y: Tensor) -> list[float]:
    labels = distilled_labels(CLASSES, cfg.images_per_class)
    return [train_and_score(model, p, images, labels, lrs, cfg.epochs, x, y) for p in inits]


def _summary(values: list[float]) -> dict:
    return mean_std(values) if len(values) > 1 else {"mean": values[0], "n": 1}


def distill(cfg: DistillConfig, out: str | Path | None = None, *, resume: bool = False,
            data: DistillData | None = None, log: Callable[[str], None] | None = print) -> dict:
    """Learn a distilled set for ``cfg``; returns the result dict (also ``out/result.json``).

    Ctrl-C returns the partial result with ``"interrupted": True``; ``last.pt`` then holds the last checkpoint
    (written at every evaluation, and every ``checkpoint_every`` steps).

    Args:
        cfg: The distillation config.
        out: Run directory (``None``: no files).
        resume: Continue the run in ``out`` (only the keys in ``RESUME_FREE`` may change); without it an
            existing ``out/last.pt`` is an error.
        data: The data (default: loaded for ``cfg``).
        log: Gets each progress line (None: quiet).

    Raises:
        ConfigError: ``resume`` without a checkpoint, with a checkpoint of another kind, or with a config that
            differs in a key that may not change.
        FileExistsError: ``out`` already holds a run and ``resume`` is off.
    """
    say = log or (lambda s: None)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    out = Path(out) if out is not None else None
    ck = None
    if out is not None:
        if resume:
            if not (out / "last.pt").is_file():
                raise ConfigError(f"--resume: {str(out / 'last.pt')!r} does not exist; nothing to resume")
            ck = load_checkpoint(out / "last.pt")
            if ck.get("kind") != KIND:
                raise ConfigError(f"--resume: {str(out / 'last.pt')!r} is a {ck.get('kind')!r} checkpoint, "
                                  "not a distillation")
            # keys added since the checkpoint was written take their defaults (the behaviour of the code then)
            saved_cfg = {**DistillConfig().to_dict(), **ck["config"]}
            old = {k: v for k, v in saved_cfg.items() if k not in RESUME_FREE}
            new = {k: v for k, v in cfg.to_dict().items() if k not in RESUME_FREE}
            diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            if diff:
                raise ConfigError(f"--resume: the run in {str(out)!r} was made with a different config "
                                  f"({', '.join(diff)} differ; only {', '.join(RESUME_FREE)} may change)")
        elif (out / "last.pt").exists():
            raise FileExistsError(f"{str(out)!r} already holds a run; add --resume or choose another --out")
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / "config.yaml", mode="w") as f:
            f.write(dump_distill_config(cfg))
    data = data or load_data(cfg)
    model = build_model(cfg, data.image_shape)
    labels = distilled_labels(CLASSES, cfg.images_per_class)
    n_inner = cfg.steps * cfg.epochs
    gen = torch.Generator().manual_seed(cfg.seed)
    images = torch.randn((cfg.steps, CLASSES * cfg.images_per_class, *data.image_shape),
                         generator=gen).requires_grad_()
    raw_lrs = inverse_softplus(torch.full((n_inner,), cfg.distill_lr)).float().requires_grad_()
    opt = torch.optim.Adam([images, raw_lrs], lr=cfg.outer_lr, betas=(cfg.outer_beta1, 0.999))
    base = fixed_init(cfg, model) if cfg.init == "fixed" else None
    val_inits = _eval_inits(cfg, model, "val")
    start, cpu_s, wall_s, history = 0, 0.0, 0.0, []
    if ck is not None:
        with torch.no_grad():
            images.copy_(ck["images"])
            raw_lrs.copy_(ck["raw_lrs"])
        opt.load_state_dict(ck["adam"])
        gen.set_state(ck["rng"])
        start, cpu_s, wall_s, history = ck["step"], ck["cpu_s"], ck["wall_s"], list(ck["history"])
        _truncate_metrics(out / "metrics.jsonl", start)
        say(f"resumed at outer step {start} of {cfg.outer_steps}")

    def lr_at(step: int) -> float:
        if cfg.outer_lr_decay_every <= 0:
            return cfg.outer_lr
        return cfg.outer_lr * cfg.outer_lr_decay ** (step // cfg.outer_lr_decay_every)

    saved = [start]

    def checkpoint(step: int) -> None:
        if out is None:
            return
        saved[0] = step
        atomic_save({"format": 1, "kind": KIND, "config": cfg.to_dict(), "step": step,
                     "images": images.detach().clone(), "raw_lrs": raw_lrs.detach().clone(),
                     "adam": opt.state_dict(), "rng": gen.get_state(), "cpu_s": cpu_s, "wall_s": wall_s,
                     "history": history}, out / "last.pt")

    window: list[float] = []
    interrupted = False
    step = start
    try:
        for step in range(start, cfg.outer_steps):
            c0, w0 = time.process_time(), time.perf_counter()
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            idx = torch.randint(0, data.train_x.shape[0], (cfg.batch_size,), generator=gen)
            real_x, real_y = data.batch(idx), data.train_y[idx]
            if cfg.augment:
                real_x = augment_batch(real_x, gen)
            opt.zero_grad(set_to_none=True)
            inits = [base] if base is not None else [init_params(model, cfg.init_scheme, gen)
                                                      for _ in range(cfg.inits_per_step)]
            total = 0.0
            for init in inits:
                loss = distill_loss(model, init, images, labels, raw_lrs, cfg.epochs, real_x, real_y) / len(inits)
                loss.backward()
                total += float(loss.detach())
            if not math.isfinite(total):
                raise FloatingPointError(f"the distillation loss is {total} at outer step {step + 1} (lower "
                                         "outer_lr or distill_lr); last.pt keeps the last good state")
            opt.step()
            cpu_s += time.process_time() - c0
            wall_s += time.perf_counter() - w0
            window.append(total)
            done = step + 1
            if done % cfg.eval_every == 0 or done == cfg.outer_steps:
                lrs = step_lrs(raw_lrs.detach())
                val = score(cfg, model, val_inits, images.detach(), lrs, data.val_x, data.val_y)
                rec = {"step": done, "loss": sum(window) / len(window), "val_acc": sum(val) / len(val),
                       "lrs": [round(float(v), 6) for v in lrs], "cpu_s": round(cpu_s, 2),
                       "wall_s": round(wall_s, 2)}
                window = []
                history.append(rec)
                say(f"step {done:6d}  loss {rec['loss']:.4f}  val acc {rec['val_acc']:.2f}%  "
                    f"lrs {', '.join(f'{v:.3g}' for v in rec['lrs'][:6])}{' ...' if n_inner > 6 else ''}  "
                    f"{cpu_s:.0f} CPU s")
                if out is not None:
                    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
                        f.write(json.dumps(rec) + "\n")
                checkpoint(done)
            elif cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
                checkpoint(done)
    except KeyboardInterrupt:
        # last.pt keeps the last completed checkpoint (a half-done step would break the exact resume)
        interrupted = True
        say(f"interrupted at outer step {step + 1}; " + (f"--resume continues from {saved[0]} (last.pt)"
                                                          if out is not None else "nothing saved"))
    result = {"kind": KIND, "config": cfg.to_dict(), "setting": cfg.init, "images": cfg.total_images,
              "inner_steps": n_inner, "outer_steps_done": history[-1]["step"] if history else start,
              "distill_cpu_s": round(cpu_s, 1), "distill_wall_s": round(wall_s, 1),
              "lrs": [float(v) for v in step_lrs(raw_lrs.detach())], "history": history,
              "interrupted": interrupted}
    if interrupted:
        return result
    lrs = step_lrs(raw_lrs.detach())
    test_inits = _eval_inits(cfg, model, "test")
    untrained = [accuracy(model, p, data.test_x, data.test_y) for p in test_inits]
    trained = score(cfg, model, test_inits, images.detach(), lrs, data.test_x, data.test_y)
    result["test"] = {"untrained": _summary(untrained), "distilled": _summary(trained)}
    result["test_images"] = int(data.test_x.shape[0])
    say(f"test accuracy: {_fmt(result['test']['untrained'])} untrained -> {_fmt(result['test']['distilled'])} "
        f"after {n_inner} steps on the {cfg.total_images} distilled images")
    if out is not None:
        atomic_save({"format": 1, "kind": KIND + "_set", "images": images.detach().clone(), "labels": labels,
                     "lrs": lrs.clone(), "epochs": cfg.epochs, "config": cfg.to_dict()}, out / "distilled.pt")
        save_grid(images.detach(), lrs, cfg, out / "distilled.png")
        save_curve(history, out / "curve.png", title=f"{DATASET_NAMES[cfg.dataset]} ({cfg.arch}), {cfg.init} init, "
                                                     f"{cfg.total_images} distilled images")
        write_json(result, out / "result.json")
    return result


def _fmt(s: dict) -> str:
    return f"{s['mean']:.2f}%" + (f" ± {s['std']:.2f}" if s.get("n", 1) > 1 else "")


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics lines past the checkpoint's step (written after the last checkpoint of a killed run)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    with atomic_write(path, mode="w") as f:
        f.write("".join(k + "\n" for k in keep))


# ---------------------------------------------------------------------------------------------- baselines


def _arrange(per_class: list[Tensor], cfg: DistillConfig) -> Tensor:
    """Class-wise image lists (each (steps * ipc, C, H, W)) -> distilled layout (steps, 10 * ipc, C, H, W)."""
    ipc = cfg.images_per_class
    batches = []
    for s in range(cfg.steps):
        batches.append(torch.cat([imgs[s * ipc:(s + 1) * ipc] for imgs in per_class]))
    return torch.stack(batches)


def random_real_sets(cfg: DistillConfig, data: DistillData, draws: int, seed: int) -> list[Tensor]:
    """``draws`` sets of ``images_per_class * steps`` random real training images per class, distilled layout."""
    g = torch.Generator().manual_seed(seed)
    per = cfg.images_per_class * cfg.steps
    by_class = [torch.nonzero(data.train_y == c).squeeze(1) for c in range(CLASSES)]
    sets = []
    for _ in range(draws):
        chosen = [data.batch(idx[torch.randperm(idx.numel(), generator=g)[:per]]) for idx in by_class]
        sets.append(_arrange(chosen, cfg))
    return sets


def kmeans_set(cfg: DistillConfig, data: DistillData, seed: int) -> Tensor:
    """k-means centres (k = images_per_class * steps) of each class's real training images, distilled layout.

    With k = 1: the class means.

    Args:
        cfg: The distillation config.
        data: The data.
        seed: The seed of k-means.
    """
    from sklearn.cluster import KMeans
    per = cfg.images_per_class * cfg.steps
    chosen = []
    for c in range(CLASSES):
        x = data.batch(torch.nonzero(data.train_y == c).squeeze(1))            # (n_c, C, H, W)
        if per == 1:
            chosen.append(x.mean(0, keepdim=True))
            continue
        km = KMeans(n_clusters=per, n_init=3, random_state=seed).fit(x.flatten(1).double().numpy())
        chosen.append(torch.from_numpy(km.cluster_centers_).float().view(per, *data.image_shape))
    return _arrange(chosen, cfg)


def baselines(cfg: DistillConfig, data: DistillData | None = None,
              log: Callable[[str], None] | None = print) -> dict:
    """The paper's baselines on the distilled set's budget.

    The same number of images, the same inits and the same ``steps * epochs`` GD steps, with one constant step size
    tuned on the validation split over ``baseline_lrs`` (the lr with the best mean validation accuracy). Test
    accuracy as in `distill`.

    Args:
        cfg: The distillation config.
        data: The data (default: loaded for ``cfg``).
        log: Gets each progress line (None: quiet).
    """
    say = log or (lambda s: None)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    data = data or load_data(cfg)
    model = build_model(cfg, data.image_shape)
    n_inner = cfg.steps * cfg.epochs
    val_inits, test_inits = _eval_inits(cfg, model, "val"), _eval_inits(cfg, model, "test")
    c0 = time.process_time()
    sets = {"random real": random_real_sets(cfg, data, cfg.baseline_draws, cfg.seed + 3_000),
            "k-means": [kmeans_set(cfg, data, cfg.seed)]}
    out = {}
    for name, candidates in sets.items():
        grid = {}
        for lr in cfg.lr_grid():
            lrs = torch.full((n_inner,), lr)
            vals = []
            for i, images in enumerate(candidates):
                inits = val_inits if len(candidates) == 1 else [val_inits[i % len(val_inits)]]
                vals += score(cfg, model, inits, images, lrs, data.val_x, data.val_y)
            grid[lr] = sum(vals) / len(vals)
        best = max(grid, key=grid.get)
        lrs = torch.full((n_inner,), best)
        tests = []
        for i, images in enumerate(candidates):
            inits = test_inits if len(candidates) == 1 else [test_inits[i % len(test_inits)]]
            tests += score(cfg, model, inits, images, lrs, data.test_x, data.test_y)
        out[name] = {"lr": best, "lr_at_grid_edge": best in (min(grid), max(grid)),
                     "val_acc_by_lr": {str(k): round(v, 3) for k, v in grid.items()}, "test": _summary(tests)}
        say(f"baseline {name:12s} lr {best:g}: test accuracy {_fmt(out[name]['test'])}")
    out["cpu_s"] = round(time.process_time() - c0, 1)
    out["sets"] = {k: v[0] for k, v in sets.items()}            # the first set of each, for a picture
    return out


# ------------------------------------------------------------------------------------------------- output


def write_json(obj: dict, path: str | Path) -> Path:
    with atomic_write(path, mode="w") as f:
        json.dump(obj, f, indent=1)
    return Path(path)


def grid_title(cfg: DistillConfig, steps: int) -> str:
    """The default title of a distilled set's grid, naming the dataset, the network and the setting.

    Args:
        cfg: The distillation config.
        steps: The distilled batches.

    Returns:
        The title.
    """
    return (f"{cfg.total_images} distilled {DATASET_NAMES[cfg.dataset]} images ({cfg.arch}, {cfg.init} init, "
            f"{steps} batch{'es' if steps > 1 else ''} x {cfg.epochs} epochs; η: the step sizes of each batch)")


def save_grid(images: Tensor, lrs: Tensor | None, cfg: DistillConfig, path: str | Path,
              title: str | None = None) -> Path:
    """The distilled images as a PNG grid: one column per class, one row per (batch, image of its class).

    Images are shown in their pixel colours: denormalised with the dataset's own per-channel mean and std
    (`NORMALIZATION`) and clamped to [0, 1]; one channel in grey, three in RGB.

    Args:
        images: The distilled images (S, 10 * ipc, C, H, W), one batch per step, normalised.
        lrs: The step sizes; each batch's row names its own (one per epoch).  None: no step sizes.
        cfg: The distillation config (its ``dataset`` gives the normalisation, the class names, the title).
        path: The PNG file.
        title: The figure's title (default: one describing the set).

    Returns:
        ``path``.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ipc, steps = cfg.images_per_class, images.shape[0]
    rows = steps * ipc
    mean, std = NORMALIZATION[cfg.dataset]
    if images.dim() != 5 or images.shape[2] != len(mean):
        raise ConfigError(f"images: expected (steps, n, {len(mean)}, H, W) {DATASET_NAMES[cfg.dataset]} images, "
                          f"got shape {tuple(images.shape)}")
    pics = denormalize(images, mean, std)                                # (S, 10 * ipc, C, H, W) in [0, 1]
    names = CLASS_NAMES[cfg.dataset]
    fig, axes = plt.subplots(rows, CLASSES, figsize=(CLASSES * 0.95, rows * 1.05 + 0.6), squeeze=False)
    for s in range(steps):
        for c in range(CLASSES):
            for j in range(ipc):
                ax = axes[s * ipc + j][c]
                pic = pics[s, c * ipc + j]
                if pic.shape[0] == 1:
                    ax.imshow(pic[0].numpy(), cmap="gray", vmin=0, vmax=1)
                else:
                    ax.imshow(pic.permute(1, 2, 0).numpy(), interpolation="nearest")   # (H, W, 3) RGB
                ax.set_xticks([]), ax.set_yticks([])
                if s == 0 and j == 0:
                    ax.set_title(names[c], fontsize=9 if max(map(len, names)) <= 4 else 7)
        if lrs is not None:
            etas = [float(lrs[e * steps + s]) for e in range(cfg.epochs)]
            axes[s * ipc][0].set_ylabel("η " + ", ".join(f"{v:.3g}" for v in etas), fontsize=7)
    fig.suptitle(title or grid_title(cfg, steps), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_curve(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Outer loss and validation accuracy against the outer step."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    steps = [h["step"] for h in history]
    ax.plot(steps, [h["loss"] for h in history], color="tab:blue", label="outer loss (real batches)")
    ax.set_xlabel("outer step")
    ax.set_ylabel("cross-entropy on real batches", color="tab:blue")
    ax2 = ax.twinx()
    ax2.plot(steps, [h["val_acc"] for h in history], color="tab:red", marker=".", label="validation accuracy")
    ax2.set_ylabel("validation accuracy (%)", color="tab:red")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def load_run_config(out: str | Path) -> dict:
    """The resolved config of a run directory (for messages and tools)."""
    return load_yaml(Path(out) / "config.yaml")
