"""What is under the data root: ``metalearn data check [--root DIR]`` ([`check_data`][metalearn.data.check.check_data]).

For every data set the loaders read (Omniglot, miniImageNet, CIFAR-10, CIFAR-10-C, MNIST) it looks for each
accepted on-disk form (the files of `FORMS`), says which are complete, partial or missing (with the
command or page that gets the data), and verifies the sha256 of every file it finds against, in this order, the
checksum pinned for the official download ([`metalearn.data.download`][metalearn.data.download]) or the folder's
``SHA256SUMS``
(``sha256sum`` format, as written by ``metalearn data download`` and shipped with the project's data copies).
Files listed in a ``SHA256SUMS`` but not part of a form are verified too.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from metalearn.data.cache import sha256_file
from metalearn.data.download import DATASETS, read_checksums

_CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
                "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
                "jpeg_compression")
_MINI_HINT = ("no official download: see 'Getting the data' in docs/data.md for the community copies and the "
              "formats read")


@dataclass(frozen=True)
class Form:
    """One accepted on-disk form of a data set: paths relative to the data root (a trailing "/" = a folder),
    ``alternatives``: other places the same form may sit (the first that exists is used)."""
    label: str
    paths: tuple[str, ...]
    hint: str = ""
    alternatives: tuple[tuple[str, ...], ...] = ()


#: The forms looked for, per data set (the layouts of docs/data.md).
FORMS: dict[str, tuple[Form, ...]] = {
    "omniglot": (
        Form("npz + character index", ("omniglot/images_background.npz", "omniglot/images_evaluation.npz",
                                       "omniglot/omniglot_character_index.csv")),
        Form("original zips", ("omniglot/images_background.zip", "omniglot/images_evaluation.zip"),
             "run: metalearn data download omniglot"),
        Form("extracted folders (torchvision omniglot-py)",
             ("omniglot/omniglot-py/images_background/", "omniglot/omniglot-py/images_evaluation/"),
             alternatives=(("omniglot-py/images_background/", "omniglot-py/images_evaluation/"),
                           ("omniglot/images_background/", "omniglot/images_evaluation/"))),
        Form("Arrow dataset", ("omniglot_hf/",)),
    ),
    "miniimagenet": (
        Form("csv + tar.gz parts", ("miniimagenet/train.csv", "miniimagenet/val.csv", "miniimagenet/test.csv",
                                    "miniimagenet/images_train_1.tar.gz", "miniimagenet/images_train_2.tar.gz",
                                    "miniimagenet/images_val.tar.gz", "miniimagenet/images_test.tar.gz"),
             _MINI_HINT),
        Form("csv + images/ folder", ("miniimagenet/train.csv", "miniimagenet/val.csv", "miniimagenet/test.csv",
                                      "miniimagenet/images/")),
        Form("torchmeta HDF5 + JSON labels", tuple(f"miniimagenet/{s}_{k}" for s in ("train", "val", "test")
                                                   for k in ("data.hdf5", "labels.json"))),
        Form("learn2learn pickles", tuple(f"miniimagenet/mini-imagenet-cache-{s}.pkl"
                                          for s in ("train", "validation", "test"))),
        Form("Arrow dataset", ("miniimagenet_hf/",)),
    ),
    "cifar10": (
        Form("JPEG archive", ("cifar10/cifar10_jpeg.tar.gz",)),
        Form("python release", ("cifar10/cifar-10-python.tar.gz",), "run: metalearn data download cifar10"),
    ),
    "cifar10c": (
        Form("official .npy files", ("cifar10c/labels.npy",) + tuple(f"cifar10c/{c}.npy" for c in _CORRUPTIONS),
             "run: metalearn data download cifar10c (2.9 GB); or generate the corruptions locally: "
             "metalearn data cifar10c",
             alternatives=(("CIFAR-10-C/labels.npy",) + tuple(f"CIFAR-10-C/{c}.npy" for c in _CORRUPTIONS),)),
    ),
    "mnist": (Form("npz", ("mnist/mnist.npz",)),),
}


def _pinned() -> dict[str, tuple[str, int]]:
    """{"<folder>/<name>": (sha256, size)} of every official download."""
    return {f"{d.folder}/{f.name}": (f.sha256, f.size) for d in DATASETS.values() for f in d.files}


@dataclass
class FileCheck:
    """One path: ``state`` is "ok" (checksum matches), "unverified" (present, no checksum known or not
    verified), "mismatch", "missing"; ``source`` says where the expected checksum came from."""
    path: str
    state: str
    expected: str | None = None
    actual: str | None = None
    source: str | None = None


@dataclass
class FormCheck:
    dataset: str
    form: Form
    files: list[FileCheck] = field(default_factory=list)

    @property
    def present(self) -> list[FileCheck]:
        return [f for f in self.files if f.state != "missing"]

    @property
    def status(self) -> str:
        """"complete", "partial", "missing" or "damaged" (a checksum mismatch)."""
        if any(f.state == "mismatch" for f in self.files):
            return "damaged"
        n = len(self.present)
        return "complete" if n == len(self.files) else ("missing" if n == 0 else "partial")


@dataclass
class DataCheck:
    """The result of [`check_data`][metalearn.data.check.check_data]: per data set its forms, plus files listed only
    in a SHA256SUMS."""
    root: Path
    forms: dict[str, list[FormCheck]]
    extra: list[FileCheck]

    @property
    def ok(self) -> bool:
        """No checksum mismatch anywhere (missing data sets are not an error)."""
        return not any(f.status == "damaged" for fs in self.forms.values() for f in fs) and \
            not any(f.state == "mismatch" for f in self.extra)

    def status(self, dataset: str) -> str:
        """"ready" (a form is complete and sound), "damaged", "partial" or "missing"."""
        states = [f.status for f in self.forms[dataset]]
        if "damaged" in states:
            return "damaged"
        if "complete" in states:
            return "ready"
        return "partial" if "partial" in states else "missing"

    def format(self) -> str:
        """The report ``metalearn data check`` prints."""
        lines = [f"data root: {self.root}"]
        width = max(len(d) for d in self.forms)
        for dataset, forms in self.forms.items():
            status = self.status(dataset)
            complete = {p.path for f in forms if f.status == "complete" for p in f.files}
            # a partial form whose present files all belong to a complete one (shared csv files) says nothing
            shown = [f for f in forms if f.status != "missing" and not (
                f.status == "partial" and {p.path for p in f.present} <= complete)]
            if not shown:
                hint = next((f.form.hint for f in forms if f.form.hint), "")
                lines.append(f"{dataset:<{width}}  missing   " + (hint or "not found"))
                continue
            for i, fc in enumerate(shown):
                head = f"{dataset:<{width}}  {status:<8}  " if i == 0 else " " * (width + 12)
                lines.append(head + _describe(fc))
                for f in fc.files:
                    if f.state == "mismatch":
                        lines.append(" " * (width + 14) + f"{f.path}: sha256 {f.actual}, expected {f.expected} "
                                                          f"({f.source})")
        groups: dict[str, list[FileCheck]] = {}
        for f in self.extra:
            groups.setdefault(os.path.dirname(f.path), []).append(f)
        for folder, files in groups.items():
            fine = [f for f in files if f.state in ("ok", "unverified")]
            if fine:
                ok = sum(f.state == "ok" for f in fine)
                lines.append(f"{'other':<{width}}  {len(fine)} more file(s) listed in {folder}/SHA256SUMS"
                             + (", sha256 ok" if ok == len(fine) else f", {ok} sha256 ok"))
            for f in files:
                if f.state == "missing":
                    lines.append(f"{'other':<{width}}  {f.path}: listed in SHA256SUMS but missing")
                elif f.state == "mismatch":
                    lines.append(f"{'other':<{width}}  {f.path}: sha256 {f.actual}, expected {f.expected} "
                                 f"({f.source})")
        counts = {s: 0 for s in ("ok", "mismatch", "unverified")}
        for f in [f for fs in self.forms.values() for fc in fs for f in fc.files] + self.extra:
            if f.state in counts:
                counts[f.state] += 1
        lines.append(f"checksums: {counts['ok']} ok, {counts['mismatch']} mismatched, {counts['unverified']} "
                     "present without a known checksum (or not verified)")
        return "\n".join(lines)


def _describe(fc: FormCheck) -> str:
    n = len(fc.present)
    ok = sum(f.state == "ok" for f in fc.files)
    text = f"{fc.form.label}: {n} of {len(fc.files)} present" if fc.status == "partial" else \
        f"{fc.form.label} ({n} file{'s' if n != 1 else ''}"
    if fc.status != "partial":
        text += f", sha256 ok)" if ok == n else (f", {ok} sha256 ok)" if ok else ")")
    else:
        missing = [f.path for f in fc.files if f.state == "missing"]
        text += f"; missing {', '.join(missing[:4])}" + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        if fc.form.hint:
            text += f" ({fc.form.hint})"
    return text


def _check_file(root: Path, rel: str, pinned: dict, sums_cache: dict, verify: bool) -> FileCheck:
    path = root / rel
    if rel.endswith("/"):
        return FileCheck(rel, "unverified" if path.is_dir() else "missing")
    if not path.is_file():
        return FileCheck(rel, "missing")
    folder = path.parent
    if folder not in sums_cache:
        try:
            sums_cache[folder] = read_checksums(folder)
        except ValueError:
            sums_cache[folder] = {}
    if rel in pinned:
        expected, source = pinned[rel][0], "pinned checksum of the official download"
    elif path.name in sums_cache[folder]:
        expected, source = sums_cache[folder][path.name], f"{os.path.relpath(folder / 'SHA256SUMS', root)}"
    else:
        return FileCheck(rel, "unverified")
    if not verify:
        return FileCheck(rel, "unverified", expected, None, source)
    actual = sha256_file(path)
    return FileCheck(rel, "ok" if actual == expected else "mismatch", expected, actual, source)


def check_data(root: str | os.PathLike | None = None, verify: bool = True) -> DataCheck:
    """Look for every form of `FORMS` under ``root`` (default $METALEARN_DATA) and verify checksums.

    Args:
        root: the data root.
        verify: hash the files found (False: report presence only).

    Returns:
        a [`DataCheck`][metalearn.data.check.DataCheck]; ``.format()`` is the printed report, ``.ok`` is False on a
        checksum mismatch.
    """
    if root is None:
        env = os.environ.get("METALEARN_DATA")
        if not env:
            raise FileNotFoundError("no data root: pass --root DIR (root=...) or set METALEARN_DATA")
        root = env
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data root {str(root)!r} is not a directory")
    pinned, sums_cache = _pinned(), {}
    forms: dict[str, list[FormCheck]] = {}
    seen: set = set()
    for dataset, options in FORMS.items():
        forms[dataset] = []
        for form in options:
            paths = form.paths
            for alt in form.alternatives:
                if not any((root / p).exists() for p in paths) and any((root / p).exists() for p in alt):
                    paths = alt
            fc = FormCheck(dataset, form, [_check_file(root, p, pinned, sums_cache, verify) for p in paths])
            seen.update(paths)
            forms[dataset].append(fc)
    extra = []
    for folder in sorted({(root / p).parent for opts in FORMS.values() for f in opts for p in f.paths}
                         | {root / "cifar10c", root / "CIFAR-10-C"}):
        try:
            sums = read_checksums(folder)
        except ValueError:
            continue
        for name in sorted(sums):
            rel = os.path.relpath(folder / name, root)
            if rel in seen:
                continue
            seen.add(rel)
            extra.append(_check_file(root, rel, pinned, sums_cache, verify))
    return DataCheck(root, forms, extra)
