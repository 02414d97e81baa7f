"""torchmeta-style helpers: ``omniglot(...)`` / ``miniimagenet(...)``, ``BatchMetaDataLoader``, and the
functions of ``torchmeta.utils.prototype`` ([`get_prototypes`][metalearn.data.helpers.get_prototypes],
[`prototypical_loss`][metalearn.data.helpers.prototypical_loss]) and
``torchmeta.utils.matching`` ([`matching_log_probas`][metalearn.data.helpers.matching_log_probas],
[`matching_loss`][metalearn.data.helpers.matching_loss], ...).

Code written for torchmeta:

```python
dataset = omniglot("data", ways=5, shots=1, test_shots=15, meta_train=True, download=True)
loader = BatchMetaDataLoader(dataset, batch_size=16, num_workers=4)
for batch in loader:
    x, y = batch["train"]   # (16, 5, 1, 28, 28) float in [0, 1], (16, 5) int64
    xq, yq = batch["test"]  # (16, 75, 1, 28, 28), (16, 75)
```

runs unchanged, on top of [`EpisodeSampler`][metalearn.episodes.EpisodeSampler] (an episode is an index gather on the
device; there are no worker processes). Differences from torchmeta, by design:

* the loader is infinite unless ``num_batches`` is given (torchmeta's is effectively infinite too);
* tasks are always random draws from a seeded generator (``seed``, default 0): the same seed gives the same
  batches; ``BatchMetaDataLoader(shuffle=...)`` and ``num_workers`` are accepted and ignored;
* ``transform`` / ``target_transform`` / ``dataset_transform`` / ``class_augmentations`` are ignored with a
  warning: Omniglot is 28x28 with 0/90/180/270 rotation classes (change with ``image_size=`` / ``rotations=``),
  miniImageNet 84x84, pixels scaled to [0, 1] as ``ToTensor`` does;
* ``download=True`` fetches Omniglot's official zips into ``folder/omniglot/`` when no Omniglot is found there
  ([`metalearn.data.download`][metalearn.data.download], sha256-pinned); miniImageNet has no official download, so for
  it the files
  must be under ``folder`` (see ``load_miniimagenet``).

torchmeta's ProtoNet and Matching Networks example scripts run with their imports changed to this module:

```python
from metalearn.data.helpers import omniglot, BatchMetaDataLoader, get_prototypes, prototypical_loss
from metalearn.data.helpers import matching_log_probas, matching_loss
```

The loss helpers take torchmeta's batched shapes: embeddings (B, N*K, D), targets (B, N*K) int64 in [0, N).
"""
from __future__ import annotations

import math
import os
import warnings
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from metalearn.data.miniimagenet import load_miniimagenet
from metalearn.data.omniglot import load_omniglot
from metalearn.data.storage import ClassImages
from metalearn.episodes import EpisodeSampler

META_SPLITS = ("train", "val", "test")
_IGNORED = ("transform", "target_transform", "dataset_transform", "class_augmentations")


class MetaDataset:
    """A meta-split ([`ClassImages`][metalearn.data.storage.ClassImages]) plus the task shape: ``ways`` classes,
    ``shots`` support and
    ``test_shots`` query images per class (torchmeta's ``num_classes_per_task`` = ways).

    ``shuffle=True`` shuffles the order of the examples inside each task's train/test sets (torchmeta's
    ``ClassSplitter(shuffle=True)``); with ``False`` they come class by class (labels 0,0,..,1,1,..).
    """

    def __init__(self, data: ClassImages, ways: int, shots: int, test_shots: int | None = None,
                 meta_split: str = "train", shuffle: bool = True, seed: int = 0) -> None:
        if not isinstance(data, ClassImages):
            raise TypeError(f"data: expected a ClassImages, got {type(data).__name__}")
        if meta_split not in META_SPLITS:
            raise ValueError(f"meta_split: expected one of {META_SPLITS}, got {meta_split!r}")
        self.data = data
        self.ways, self.shots = ways, shots
        self.test_shots = shots if test_shots is None else test_shots
        self.meta_split, self.shuffle, self.seed = meta_split, bool(shuffle), seed
        self.sampler(1, seed)  # validates ways/shots/test_shots against the data now, with clear messages

    @property
    def num_classes_per_task(self) -> int:
        return self.ways

    @property
    def num_classes(self) -> int:
        """Classes of the split (rotation classes included)."""
        return self.data.num_classes

    def __len__(self) -> int:
        """Number of distinct class combinations, as torchmeta's CombinationMetaDataset."""
        return math.comb(self.num_classes, self.ways)

    def to(self, device: torch.device | str) -> "MetaDataset":
        return MetaDataset(self.data.to(device), self.ways, self.shots, self.test_shots, self.meta_split,
                           self.shuffle, self.seed)

    def sampler(self, batch_size: int = 1, seed: int | None = None) -> EpisodeSampler:
        """An [`EpisodeSampler`][metalearn.episodes.EpisodeSampler] drawing ``batch_size`` tasks of this shape per call.

        Args:
            batch_size: Tasks per call.
            seed: The sampler's seed (default: the dataset's).
        """
        return EpisodeSampler(self.data, ways=self.ways, shots=self.shots, queries=self.test_shots,
                              batch_size=batch_size, seed=self.seed if seed is None else seed)

    def __repr__(self) -> str:
        return (f"MetaDataset(meta_split={self.meta_split!r}, classes={self.num_classes}, ways={self.ways}, "
                f"shots={self.shots}, test_shots={self.test_shots}, image_shape={self.data.image_shape})")


class BatchMetaDataLoader:
    """Batches of ``batch_size`` tasks from a [`MetaDataset`][metalearn.data.helpers.MetaDataset], as dicts
    ``{"train": (x, y), "test": (x, y)}``: x (B, N*K, C, H, W) float32 in [0, 1], y (B, N*K) int64 in [0, N)
    (test: N*test_shots), on the dataset's device.

    Infinite unless ``num_batches`` is given (then ``len(loader) == num_batches`` and each ``iter()`` yields that
    many). One seeded stream per loader (``seed``, default the dataset's): iterating again continues the stream,
    and two loaders with the same seed yield the same batches. ``shuffle``, ``num_workers`` and any other
    torch DataLoader keyword are accepted for compatibility and ignored.
    """

    def __init__(self, dataset: MetaDataset, batch_size: int = 1, shuffle: bool = True, num_workers: int = 0,
                 num_batches: int | None = None, seed: int | None = None, **ignored) -> None:
        if not isinstance(dataset, MetaDataset):
            raise TypeError(f"dataset: expected a MetaDataset (from omniglot()/miniimagenet()), "
                            f"got {type(dataset).__name__}")
        if num_batches is not None and (isinstance(num_batches, bool) or not isinstance(num_batches, int)
                                        or num_batches < 1):
            raise ValueError(f"num_batches: expected a positive integer or None, got {num_batches!r}")
        self.dataset, self.batch_size, self.num_batches = dataset, batch_size, num_batches
        self._sampler = dataset.sampler(batch_size, seed)

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this BatchMetaDataLoader is infinite: pass num_batches=... to give it a length")
        return self.num_batches

    def _shuffle(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, n = y.shape
        perm = torch.rand(B, n, generator=self._sampler.generator, device=y.device).argsort(dim=1)
        idx = perm.view(B, n, *([1] * (x.dim() - 2))).expand_as(x)
        return x.gather(1, idx), y.gather(1, perm)

    def sample(self) -> dict:
        """One batch (see the class docstring)."""
        ep = self._sampler.sample()
        train, test = (ep.support_x, ep.support_y), (ep.query_x, ep.query_y)
        if self.dataset.shuffle:
            train, test = self._shuffle(*train), self._shuffle(*test)
        return {"train": train, "test": test}

    def __iter__(self) -> Iterator[dict]:
        n = 0
        while self.num_batches is None or n < self.num_batches:
            yield self.sample()
            n += 1


def _meta_split(meta_split: str | None, kwargs: dict) -> str:
    flags = {s: kwargs.pop(f"meta_{s}", False) for s in META_SPLITS}
    chosen = [s for s, v in flags.items() if v]
    if len(chosen) > 1:
        raise ValueError(f"meta_train/meta_val/meta_test: set only one to True, got {chosen}")
    if meta_split is not None and meta_split not in META_SPLITS:
        raise ValueError(f"meta_split: expected one of {META_SPLITS}, got {meta_split!r}")
    if chosen and meta_split is not None and chosen[0] != meta_split:
        raise ValueError(f"meta_split={meta_split!r} contradicts meta_{chosen[0]}=True")
    return meta_split or (chosen[0] if chosen else "train")


def _pop_ignored(kwargs: dict, helper: str) -> None:
    got = [k for k in _IGNORED if kwargs.pop(k, None) is not None]
    if got:
        warnings.warn(f"{helper}(): {got} ignored; images come as float tensors in [0, 1] (see "
                      "metalearn.data.helpers)", stacklevel=3)
    if kwargs.pop("use_vinyals_split", True) is not True:
        raise ValueError("use_vinyals_split: only the Vinyals split (True) is supported")


def _load(loader, folder, download: bool, **kw) -> ClassImages:
    try:
        return loader(folder, **kw)
    except FileNotFoundError as e:
        if not download:
            raise
        if loader is not load_omniglot:
            raise FileNotFoundError(f"{e} (download=True: miniImageNet has no official download, so metalearn "
                                    "downloads nothing for it; place the files under the folder: see 'Getting the "
                                    "data' in docs/data.md)") from e
    from metalearn.data.download import download_dataset
    download_dataset("omniglot", folder)          # the official zips, sha256-pinned, into folder/omniglot/
    return loader(folder, **kw)


def omniglot(folder: str | os.PathLike | None, shots: int, ways: int, shuffle: bool = True,
             test_shots: int | None = None, seed: int = 0, *, meta_split: str | None = None,
             download: bool = False, image_size: int = 28, rotations=(0, 90, 180, 270), source: str = "auto",
             cache_dir=None, hf_name=None, device: torch.device | str | None = None, **kwargs) -> MetaDataset:
    """Omniglot meta-split as torchmeta's ``omniglot`` helper (same positional order: folder, shots, ways).

    Images (1, image_size, image_size); each character is one class per rotation (torchmeta's
    ``class_augmentations=[Rotation([90, 180, 270])]``).

    Args:
        folder: The data root (see [`load_omniglot`][metalearn.data.omniglot.load_omniglot]).
        shots: Support images per class.
        ways: Classes per task.
        shuffle: Shuffle the examples inside each task's train/test sets.
        test_shots: Query images per class (default ``shots``).
        seed: The seed of the task stream.
        meta_split: "train", "val" or "test" (default "train"); torchmeta's ``meta_train=True`` /
            ``meta_val=True`` / ``meta_test=True`` work too.
        download: Download the official files when they are missing.
        image_size: The side of the square images.
        rotations (Sequence[int] | None): The class-augmentation angles.
        source: Where the images are read from (see [`load_omniglot`][metalearn.data.omniglot.load_omniglot]).
        cache_dir (str | os.PathLike | None): Where the decoded cache lives.
        hf_name (str | os.PathLike | None): A ``save_to_disk`` folder or a Hub id for the "hf" source.
        device: Moves the images there (sampling then happens on it).
        **kwargs (object): torchmeta's ``meta_train`` / ``meta_val`` / ``meta_test``; its ``transform``,
            ``target_transform``, ``dataset_transform`` and ``class_augmentations`` are ignored with a warning.

    Raises:
        TypeError: An unexpected keyword argument.
        ValueError: Contradicting splits, or ``use_vinyals_split`` other than True.
        FileNotFoundError: The files are missing (and ``download`` is off).
    """
    split = _meta_split(meta_split, kwargs)
    _pop_ignored(kwargs, "omniglot")
    if kwargs:
        raise TypeError(f"omniglot(): unexpected keyword argument(s) {sorted(kwargs)}")
    data = _load(load_omniglot, folder, download, split=split, image_size=image_size, rotations=rotations,
                 source=source, cache_dir=cache_dir, hf_name=hf_name)
    if device is not None:
        data = data.to(device)
    return MetaDataset(data, ways, shots, test_shots, split, shuffle, seed)


def miniimagenet(folder: str | os.PathLike | None, shots: int, ways: int, shuffle: bool = True,
                 test_shots: int | None = None, seed: int = 0, *, meta_split: str | None = None,
                 download: bool = False, source: str = "auto", cache_dir=None, hf_name=None,
                 device: torch.device | str | None = None, **kwargs) -> MetaDataset:
    """miniImageNet meta-split as torchmeta's ``miniimagenet`` helper (folder, shots, ways, ...).

    Images (3, 84, 84).

    Args:
        folder: The data root (see [`load_miniimagenet`][metalearn.data.miniimagenet.load_miniimagenet]).
        shots: Support images per class.
        ways: Classes per task.
        shuffle: Shuffle the examples inside each task's train/test sets.
        test_shots: Query images per class (default ``shots``).
        seed: The seed of the task stream.
        meta_split: As in [`omniglot`][metalearn.data.helpers.omniglot].
        download: Accepted; miniImageNet has no official download, so nothing is downloaded (the error of a
            missing file says so).
        source: Where the images are read from (see
            [`load_miniimagenet`][metalearn.data.miniimagenet.load_miniimagenet]).
        cache_dir (str | os.PathLike | None): Where the decoded cache lives.
        hf_name (str | os.PathLike | None): A ``save_to_disk`` folder or a Hub id for the "hf" source.
        device: Moves the images there (sampling then happens on it).
        **kwargs (object): As in [`omniglot`][metalearn.data.helpers.omniglot].

    Raises:
        TypeError: An unexpected keyword argument.
        ValueError: Contradicting splits, or ``use_vinyals_split`` other than True.
        FileNotFoundError: The files are missing.
    """
    split = _meta_split(meta_split, kwargs)
    _pop_ignored(kwargs, "miniimagenet")
    if kwargs:
        raise TypeError(f"miniimagenet(): unexpected keyword argument(s) {sorted(kwargs)}")
    data = _load(load_miniimagenet, folder, download, split=split, source=source, cache_dir=cache_dir,
                 hf_name=hf_name)
    if device is not None:
        data = data.to(device)
    return MetaDataset(data, ways, shots, test_shots, split, shuffle, seed)


# ----------------------------------------------------------------------------- torchmeta.utils.prototype / matching
def _check_batched(name: str, x: Tensor, dims: int = 3) -> None:
    if not isinstance(x, Tensor) or x.dim() != dims:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{name}: expected a tensor of {dims} dimensions (batch, examples, ...), got {shape}")


def _check_targets(name: str, targets: Tensor, like: Tensor, num_classes: int) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes: expected a positive integer, got {num_classes!r}")
    if not isinstance(targets, Tensor) or targets.shape != like.shape[:2]:
        shape = tuple(targets.shape) if isinstance(targets, Tensor) else type(targets).__name__
        raise ValueError(f"{name}: expected shape {tuple(like.shape[:2])} (batch, examples), got {shape}")
    if targets.dtype.is_floating_point or targets.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class indices, got {targets.dtype}")
    if targets.numel() and not bool(((targets >= 0) & (targets < num_classes)).all()):
        raise ValueError(f"{name}: class indices must be in [0, {num_classes}), got values in "
                         f"[{int(targets.min())}, {int(targets.max())}]")


def get_num_samples(targets: Tensor, num_classes: int, dtype: torch.dtype | None = None) -> Tensor:
    """Examples per class, as ``torchmeta.utils.prototype.get_num_samples``.

    Args:
        targets: (B, N) int class indices in [0, num_classes).
        num_classes: The number of classes.
        dtype: The dtype of the counts (default that of ``targets``).

    Returns:
        (B, num_classes) counts.
    """
    return F.one_hot(targets.long(), num_classes).sum(1).to(targets.dtype if dtype is None else dtype)


def get_prototypes(embeddings: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Class means of the support embeddings, batched (Snell et al. 2017, eq. 1), as torchmeta's.

    Args:
        embeddings: (B, N, D) support embeddings.
        targets: (B, N) int64 class indices in [0, num_classes).
        num_classes: the number of classes per task (torchmeta's ``dataset.num_classes_per_task``).

    Returns:
        (B, num_classes, D) prototypes (a class with no support example gets the zero vector, as in torchmeta).

    Examples:
        >>> z = torch.tensor([[[0., 0.], [2., 0.], [0., 4.]]])          # (1, 3, 2)
        >>> get_prototypes(z, torch.tensor([[0, 0, 1]]), 2)
        tensor([[[1., 0.],
                 [0., 4.]]])
    """
    _check_batched("embeddings", embeddings)
    _check_targets("targets", targets, embeddings, num_classes)
    onehot = F.one_hot(targets.long(), num_classes).to(embeddings.dtype)       # (B, N, C)
    sums = onehot.transpose(1, 2) @ embeddings                                  # (B, C, D)
    return sums / onehot.sum(1).clamp_min(1).unsqueeze(-1)


def prototypical_loss(prototypes: Tensor, embeddings: Tensor, targets: Tensor, **kwargs: object) -> Tensor:
    """Cross-entropy of the query points under softmax(-squared Euclidean distance to each prototype).

    Args:
        prototypes: (B, C, D) from [`get_prototypes`][metalearn.data.helpers.get_prototypes].
        embeddings: (B, M, D) query embeddings.
        targets: (B, M) int64 query classes in [0, C).
        **kwargs: passed to ``torch.nn.functional.cross_entropy`` (``reduction=...``, ``label_smoothing=...``).

    Returns:
        the loss (a scalar with the default ``reduction="mean"`` over all B*M queries), as torchmeta's: the logits
        ``-||prototype_c - embedding_m||^2`` have shape (B, C, M).
    """
    _check_batched("prototypes", prototypes)
    _check_batched("embeddings", embeddings)
    if prototypes.shape[0] != embeddings.shape[0] or prototypes.shape[-1] != embeddings.shape[-1]:
        raise ValueError(f"prototypes {tuple(prototypes.shape)} and embeddings {tuple(embeddings.shape)}: expected "
                         "the same batch size and embedding size")
    _check_targets("targets", targets, embeddings, prototypes.shape[1])
    sq = ((prototypes.unsqueeze(2) - embeddings.unsqueeze(1)) ** 2).sum(-1)     # (B, C, M)
    return F.cross_entropy(-sq, targets, **kwargs)


def pairwise_cosine_similarity(embeddings1: Tensor, embeddings2: Tensor, eps: float = 1e-8) -> Tensor:
    """Cosine similarity of every pair, as ``torchmeta.utils.matching.pairwise_cosine_similarity``.

    ``x1 . x2 / max(||x1|| ||x2||, eps)``.

    Args:
        embeddings1: (B, N, D) embeddings.
        embeddings2: (B, M, D) embeddings.
        eps: The floor of the norm product.

    Returns:
        (B, N, M) similarities.
    """
    _check_batched("embeddings1", embeddings1)
    _check_batched("embeddings2", embeddings2)
    sq1 = (embeddings1 ** 2).sum(2, keepdim=True)                              # (B, N, 1)
    sq2 = (embeddings2 ** 2).sum(2).unsqueeze(1)                               # (B, 1, M)
    return (embeddings1 @ embeddings2.transpose(1, 2)) * torch.rsqrt(torch.clamp(sq1 * sq2, min=eps ** 2))


def matching_log_probas(embeddings: Tensor, targets: Tensor, test_embeddings: Tensor, num_classes: int,
                        eps: float = 1e-8) -> Tensor:
    """Log-probabilities of the Matching Networks classifier (Vinyals et al. 2016, eq. 1-2), as torchmeta's.

    The attention of query m on support example n is the softmax over n of their cosine similarity; the
    probability of class c is the attention summed over the support examples of class c.

    Args:
        embeddings: (B, N, D) support embeddings.
        targets: (B, N) int64 support classes in [0, num_classes).
        test_embeddings: (B, M, D) query embeddings.
        num_classes: classes per task.
        eps: floor of the norm product in the cosine similarity.

    Returns:
        (B, num_classes, M) log-probabilities (note the class axis is 1, as in torchmeta: ``argmax(dim=1)`` gives
        the predictions); a class with no support example gets -inf.
    """
    _check_batched("embeddings", embeddings)
    _check_batched("test_embeddings", test_embeddings)
    _check_targets("targets", targets, embeddings, num_classes)
    log_attention = torch.log_softmax(pairwise_cosine_similarity(embeddings, test_embeddings, eps), dim=1)  # (B,N,M)
    onehot = F.one_hot(targets.long(), num_classes).to(log_attention.dtype)   # (B, N, C)
    log_mask = torch.log(onehot).unsqueeze(-1)                                  # (B, N, C, 1): 0 or -inf
    return torch.logsumexp(log_attention.unsqueeze(2) + log_mask, dim=1)       # (B, C, M)


def matching_probas(embeddings: Tensor, targets: Tensor, test_embeddings: Tensor, num_classes: int,
                    eps: float = 1e-8) -> Tensor:
    """``exp`` of [`matching_log_probas`][metalearn.data.helpers.matching_log_probas].

    Args:
        embeddings: (B, N, D) support embeddings.
        targets: (B, N) int64 support classes in [0, num_classes).
        test_embeddings: (B, M, D) query embeddings.
        num_classes: Classes per task.
        eps: The floor of the norm product in the cosine similarity.

    Returns:
        (B, num_classes, M) probabilities.
    """
    return matching_log_probas(embeddings, targets, test_embeddings, num_classes, eps).exp()


def matching_loss(train_embeddings: Tensor, train_targets: Tensor, test_embeddings: Tensor, test_targets: Tensor,
                  num_classes: int, eps: float = 1e-8, **kwargs: object) -> Tensor:
    """Negative log-likelihood of the query classes under
    [`matching_log_probas`][metalearn.data.helpers.matching_log_probas], as torchmeta's.

    Args:
        train_embeddings: (B, N, D) support embeddings.
        train_targets: (B, N) support classes.
        test_embeddings: (B, M, D) query embeddings.
        test_targets: (B, M) query classes.
        num_classes: classes per task.
        eps: as in [`matching_log_probas`][metalearn.data.helpers.matching_log_probas].
        **kwargs: passed to ``torch.nn.functional.nll_loss``.
    """
    log_probas = matching_log_probas(train_embeddings, train_targets, test_embeddings, num_classes, eps)
    _check_targets("test_targets", test_targets, test_embeddings, num_classes)
    return F.nll_loss(log_probas, test_targets, **kwargs)
