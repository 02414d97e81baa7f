"""Download the official upstream files of Omniglot, CIFAR-10 and CIFAR-10-C, pinned by sha256.

``metalearn data download omniglot | cifar10 | cifar10c [--root DIR] [--url URL ...] [--timeout S]``
([`download_dataset`][metalearn.data.download.download_dataset]). Every file has a pinned sha256 (and its size); a
download

* resumes: the bytes go to ``<name>.part`` next to the final file; a new attempt (after an interrupted
  connection, a timeout, or in a later run) asks the server for the rest with an HTTP ``Range`` request, and
  starts over if the server ignores it;
* shows a tqdm progress bar (bytes);
* is placed atomically: ``<name>.part`` is renamed to ``<name>`` (``os.replace``) only after its size and
  sha256 match, so the loaders never see a partial or unverified file;
* fails clearly: a checksum mismatch names the URL, the expected and the received sha256 (and removes the bad
  bytes); a 404, a refused connection or a stalled server name the URL; with several URLs (``--url`` mirrors,
  then the official one) each is tried in turn.

Where the files go (under the data root, ``--root`` or ``$METALEARN_DATA``), read in place by the loaders:

* ``omniglot/images_background.zip``, ``omniglot/images_evaluation.zip``
  ([`metalearn.data.omniglot`][metalearn.data.omniglot],
  source ``"zip"``), from the dataset authors' repository (github.com/brendenlake/omniglot);
* ``cifar10/cifar-10-python.tar.gz`` ([`metalearn.data.cifar10`][metalearn.data.cifar10]), from the University of
  Toronto page;
* ``cifar10c/<corruption>.npy`` and ``cifar10c/labels.npy``
  ([`metalearn.data.cifar10c.load_cifar10c_official`][metalearn.data.cifar10c.load_cifar10c_official]),
  extracted from ``CIFAR-10-C.tar`` (Zenodo record 2535967, 2.9 GB). The archive is deleted after extraction
  unless ``keep_archive=True``.

Each dataset folder gets a ``SHA256SUMS`` (``sha256sum`` format) listing what was downloaded or extracted, which
``metalearn data check`` ([`metalearn.data.check`][metalearn.data.check]) verifies.

Provenance of the pinned checksums: the sha256 values and sizes are those published in TensorFlow Datasets'
``url_checksums`` files (``omniglot.txt``, ``cifar10.csv``, ``cifar10_corrupted.txt``); the CIFAR-10 sha256 is
also the ``file_hash`` of Keras' ``cifar10.load_data``. The md5 values, verified as well, are the ones published
by the sources: the Toronto page (CIFAR-10), the Zenodo record (CIFAR-10-C) and torchvision's Omniglot class.
They could not be re-computed here (these machines have no access to the upstream servers).
"""
from __future__ import annotations

import contextlib
import hashlib
import http.client
import os
import re
import socket
import tarfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from metalearn.data.cache import atomic_write, sha256_file

_CHUNK = 1 << 20
CHECKSUM_FILE = "SHA256SUMS"


class DownloadError(OSError):
    """A download failed: the message names the URL(s) and why (HTTP status, timeout, refused connection)."""


class ChecksumError(DownloadError):
    """Downloaded (or present) bytes do not match the pinned sha256; names the URL or file and both digests."""


@dataclass(frozen=True)
class RemoteFile:
    """One upstream file: its name in the dataset folder, the official URL, sha256, size in bytes, md5."""
    name: str
    url: str
    sha256: str
    size: int
    md5: str | None = None


@dataclass(frozen=True)
class RemoteDataset:
    """A downloadable data set: the folder under the data root, its files, and an optional step after the
    download (CIFAR-10-C: extract the ``.npy`` files) that returns the files it produced."""
    name: str
    folder: str
    files: tuple[RemoteFile, ...]
    description: str
    extract: Callable[[Path, Path, bool], list[Path]] | None = field(default=None, compare=False)


def _extract_cifar10c(archive: Path, folder: Path, progress: bool) -> list[Path]:
    return extract_npy_members(archive, folder, progress=progress)


OMNIGLOT = RemoteDataset(
    "omniglot", "omniglot",
    (RemoteFile("images_background.zip",
                "https://github.com/brendenlake/omniglot/raw/master/python/images_background.zip",
                "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640", 9464212,
                "68d2efa1b9178cc56df9314c21c6e718"),
     RemoteFile("images_evaluation.zip",
                "https://github.com/brendenlake/omniglot/raw/master/python/images_evaluation.zip",
                "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee", 6462886,
                "6b91aef0f799c5bb55b94e3f2daec811")),
    "Omniglot (Lake et al. 2015), the original images_background.zip and images_evaluation.zip, 16 MB")
CIFAR10 = RemoteDataset(
    "cifar10", "cifar10",
    (RemoteFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071,
                "c58f30108f718f92721af3b95e74349a"),),
    "CIFAR-10 (Krizhevsky 2009), the python release, 163 MB")
CIFAR10C = RemoteDataset(
    "cifar10c", "cifar10c",
    (RemoteFile("CIFAR-10-C.tar", "https://zenodo.org/record/2535967/files/CIFAR-10-C.tar",
                "c72763e101c723b7c507b96205f7e938912a5d587376173b825850cf3cb876a7", 2918471680,
                "56bf5dcef84df0e2308c6dcbcbbd8499"),),
    "CIFAR-10-C (Hendrycks & Dietterich 2019), the official .npy release, 2.9 GB",
    _extract_cifar10c)

#: The data sets ``metalearn data download`` knows, by name.
DATASETS: dict[str, RemoteDataset] = {d.name: d for d in (OMNIGLOT, CIFAR10, CIFAR10C)}

#: ``<corruption>.npy`` (and ``labels.npy``) names accepted when extracting CIFAR-10-C: plain lower-case names.
_NPY_NAME = re.compile(r"^[a-z0-9_]+\.npy$")


# ----------------------------------------------------------------------------- checksum files
def read_checksums(folder: str | os.PathLike) -> dict[str, str]:
    """``{file name: sha256}`` from ``folder/SHA256SUMS`` (``sha256sum`` format; empty if there is none)."""
    path = Path(folder) / CHECKSUM_FILE
    out: dict[str, str] = {}
    if not path.is_file():
        return out
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([0-9a-fA-F]{64})\s+\*?(.+)$", line)
        if not m:
            raise ValueError(f"{path}, line {n}: expected '<sha256>  <file name>', got {line!r}")
        out[m.group(2).strip()] = m.group(1).lower()
    return out


def record_checksums(folder: str | os.PathLike, entries: dict[str, str]) -> Path:
    """Add or update ``entries`` ({name: sha256}) in ``folder/SHA256SUMS`` (written atomically, sorted)."""
    folder = Path(folder)
    sums = read_checksums(folder)
    sums.update(entries)
    with atomic_write(folder / CHECKSUM_FILE, "w") as f:
        for name in sorted(sums):
            f.write(f"{sums[name]}  {name}\n")
    return folder / CHECKSUM_FILE


# ----------------------------------------------------------------------------- one file
def _fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class _Retry(Exception):
    """A transient failure (connection dropped, timeout): the partial file is kept and the request repeated."""


def _part_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".part")


def _hash_prefix(path: Path, hashers: Sequence) -> int:
    n = 0
    with open(path, "rb") as f:
        while True:
            b = f.read(_CHUNK)
            if not b:
                return n
            for h in hashers:
                h.update(b)
            n += len(b)


def _open(url: str, start: int, timeout: float):
    headers = {"User-Agent": "metalearn-downloader", "Accept-Encoding": "identity"}
    if start:
        headers["Range"] = f"bytes={start}-"
    return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)


def _fetch(url: str, part: Path, size: int | None, timeout: float, bar) -> None:
    """Bring ``part`` to the full content of ``url``, appending to what it holds (HTTP Range).

    Args:
        url: The file's address.
        part: The partial file.
        size: The full file's size in bytes, if known.
        timeout: Seconds to wait for an answer.
        bar: The progress bar.

    Raises:
        _Retry: A transient failure (``part`` keeps what arrived).
        DownloadError: Any other failure ([`DownloadError`][metalearn.data.download.DownloadError]).
    """
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have > size:  # longer than the real file: cannot be a prefix of it
        part.unlink()
        have = 0
    if size is not None and have == size:
        return
    try:
        resp = _open(url, have, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:  # nothing left to send: the part is (probably) complete; the checksum decides
            return
        if e.code in (408, 429) or e.code >= 500:
            raise _Retry(f"HTTP {e.code} {e.reason}") from e
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from e
    except (socket.timeout, TimeoutError) as e:
        raise _Retry(f"no answer within {timeout:g} s") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, (socket.timeout, TimeoutError)):
            raise _Retry(f"no answer within {timeout:g} s") from e
        raise DownloadError(f"{url}: cannot connect ({e.reason})") from e
    except (ConnectionError, http.client.HTTPException) as e:
        raise _Retry(f"{type(e).__name__}: {e}") from e
    with resp:
        status = getattr(resp, "status", 200)
        mode = "ab"
        if have and status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                raise _Retry(f"the server answered the range request from byte {have} with "
                             f"Content-Range {resp.headers.get('Content-Range')!r}; starting over")
        elif have:  # 200: the server ignored the range: start again from byte 0
            mode, have = "wb", 0
            bar.reset(total=bar.total)
        length = resp.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else size
        received = have
        with open(part, mode) as f:
            try:
                while True:
                    try:
                        b = resp.read(_CHUNK)
                    except (socket.timeout, TimeoutError) as e:
                        raise _Retry(f"stalled: no data for {timeout:g} s after {received} bytes") from e
                    except (ConnectionError, http.client.HTTPException) as e:
                        raise _Retry(f"connection lost after {received} bytes ({type(e).__name__})") from e
                    if not b:
                        break
                    f.write(b)
                    received += len(b)
                    bar.update(len(b))
            finally:
                f.flush()
                os.fsync(f.fileno())
        if expected is not None and received < expected:
            raise _Retry(f"connection closed after {received} of {expected} bytes")


def _verify(path: Path, sha256: str, md5: str | None) -> tuple[str, str | None]:
    hs = [hashlib.sha256()] + ([hashlib.md5()] if md5 else [])  # noqa: S324 - md5 only as published upstream
    _hash_prefix(path, hs)
    return hs[0].hexdigest(), (hs[1].hexdigest() if md5 else None)


def download_file(urls: str | Sequence[str], dest: str | os.PathLike, sha256: str, size: int | None = None, *,
                  md5: str | None = None, timeout: float = 60.0, retries: int = 3, backoff: float = 1.0,
                  progress: bool = True) -> Path:
    """Download ``dest`` from the first of ``urls`` that delivers bytes with the pinned ``sha256``.

    Args:
        urls: one URL or several (mirrors first, then the official one); each is tried in turn.
        dest: the final path; the bytes arrive in ``dest + ".part"`` and are renamed only once verified.
        sha256: expected hex digest (required).
        size: expected size in bytes (checked when given; also used for the progress bar).
        md5: expected md5, as some sources publish it (checked when given).
        timeout: seconds without an answer or without data before an attempt is abandoned.
        retries: repeated attempts per URL after a transient failure (dropped connection, timeout, HTTP 5xx),
            each resuming where the last stopped.
        backoff: seconds to wait before the k-th retry, times k.
        progress: tqdm bar over the bytes.

    Returns:
        ``dest``. An existing ``dest`` with the right sha256 is kept as it is (no request is made).

    Raises:
        ChecksumError: an existing ``dest`` does not match (delete it, or ``--force``), or every URL delivered
            bytes that do not match (the message names the URL, both digests and the sizes).
        DownloadError: no URL could deliver the file (each URL and its failure are listed).
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    if not urls:
        raise ValueError("urls: expected at least one URL")
    if not re.fullmatch(r"[0-9a-f]{64}", sha256):
        raise ValueError(f"sha256: expected 64 lower-case hex digits, got {sha256!r}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
        raise ValueError(f"timeout: expected a positive number of seconds, got {timeout!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries: expected a non-negative integer, got {retries!r}")
    dest = Path(dest)
    if dest.is_file():
        got, _ = _verify(dest, sha256, None)
        if got == sha256:
            return dest
        raise ChecksumError(f"{dest} exists but its sha256 is {got}, expected {sha256}: delete it (or pass "
                            "--force) to download it again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = _part_path(dest)
    failures: list[str] = []
    with _progress_bytes(size, dest.name, progress) as bar:
        for url in urls:
            attempt = 0
            while True:
                try:
                    bar.n = part.stat().st_size if part.exists() else 0
                    bar.refresh()
                    _fetch(url, part, size, float(timeout), bar)
                except _Retry as e:
                    attempt += 1
                    if attempt > retries:
                        failures.append(f"{url}: {e} (gave up after {attempt} attempt(s); {_have(part)} kept in "
                                        f"{part.name}, a new run resumes from there)")
                        break
                    time.sleep(backoff * attempt)
                    continue
                except DownloadError as e:
                    failures.append(str(e))
                    break
                got, got_md5 = _verify(part, sha256, md5)
                n = part.stat().st_size
                if got != sha256 or (size is not None and n != size) or (md5 and got_md5 != md5):
                    part.unlink()
                    failures.append(
                        f"{url}: checksum mismatch: expected sha256 {sha256}" + (f" ({size} bytes)" if size else "")
                        + f", received sha256 {got} ({n} bytes)" + (f", md5 {got_md5} (expected {md5})" if md5
                                                                    and got_md5 != md5 else "")
                        + "; the received bytes were removed")
                    break
                os.replace(part, dest)
                _fsync_dir(dest.parent)
                return dest
    err = ChecksumError if all("checksum mismatch" in f for f in failures) else DownloadError
    raise err(f"could not download {dest.name}:\n  " + "\n  ".join(failures))


def _have(part: Path) -> str:
    return f"{part.stat().st_size} bytes" if part.exists() else "nothing"


class _NullBar:
    total = None
    n = 0

    def update(self, n: int = 1) -> None:
        pass

    def reset(self, total=None) -> None:
        pass

    def refresh(self) -> None:
        pass


@contextlib.contextmanager
def _progress_bytes(total: int | None, desc: str, enabled: bool):
    if not enabled:
        yield _NullBar()
        return
    from tqdm.auto import tqdm
    with tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024, leave=True) as bar:
        yield bar


# ----------------------------------------------------------------------------- archives
def extract_npy_members(archive: str | os.PathLike, folder: str | os.PathLike, progress: bool = True
                        ) -> list[Path]:
    """Extract every ``*.npy`` member of a (plain or compressed) tar into ``folder`` by its base name.

    ``CIFAR-10-C/fog.npy`` -> ``folder/fog.npy``, each written atomically; other members are skipped.  Records
    their sha256 in ``folder/SHA256SUMS``.

    Args:
        archive: The tar file.
        folder: Where the members go.
        progress: Show a progress bar.

    Returns:
        The extracted paths.

    Raises:
        ValueError: A member whose name is not a plain lower-case file name, an unreadable archive, or one without
            ``.npy`` files.
    """
    archive, folder = Path(archive), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out, sums = [], {}
    try:
        with tarfile.open(archive, "r:*") as tf, _progress_bytes(archive.stat().st_size, f"extracting {archive.name}",
                                                                  progress) as bar:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if not m.isfile() or not base.endswith(".npy"):
                    continue
                if not _NPY_NAME.match(base):
                    raise ValueError(f"{archive}: member {m.name!r} does not have a plain file name")
                src = tf.extractfile(m)
                if src is None:  # pragma: no cover - regular files always have data
                    continue
                h = hashlib.sha256()
                with atomic_write(folder / base) as f:
                    while True:
                        b = src.read(_CHUNK)
                        if not b:
                            break
                        h.update(b)
                        f.write(b)
                        bar.update(len(b))
                sums[base] = h.hexdigest()
                out.append(folder / base)
    except (tarfile.TarError, EOFError) as e:
        raise ValueError(f"{archive}: cannot read the archive, truncated or corrupted? ({type(e).__name__}: {e})"
                         ) from e
    if not out:
        raise ValueError(f"{archive}: no .npy files in the archive")
    record_checksums(folder, sums)
    return out


# ----------------------------------------------------------------------------- a whole data set
@dataclass
class DownloadReport:
    """What [`download_dataset`][metalearn.data.download.download_dataset] did: the dataset folder, the files now in
    place, which were fetched."""
    name: str
    folder: Path
    files: list[Path]
    downloaded: list[str]
    skipped: list[str]

    def message(self) -> str:
        done = f"downloaded {', '.join(self.downloaded)}" if self.downloaded else "nothing to download"
        kept = f"; already present and verified: {', '.join(self.skipped)}" if self.skipped else ""
        return f"{self.name}: {done}{kept}; {len(self.files)} file(s) under {self.folder}"


def _root(root: str | os.PathLike | None) -> Path:
    if root is None:
        env = os.environ.get("METALEARN_DATA")
        if not env:
            raise FileNotFoundError("no data root: pass --root DIR (root=...) or set METALEARN_DATA")
        root = env
    path = Path(root).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def _extracted(folder: Path) -> list[Path] | None:
    """The files an earlier extraction recorded in SHA256SUMS, if they are all present with those checksums."""
    sums = {n: s for n, s in read_checksums(folder).items() if n.endswith(".npy")}
    if not sums or not all((folder / n).is_file() for n in sums):
        return None
    return [folder / n for n in sorted(sums)] if all(sha256_file(folder / n) == s for n, s in sums.items()) else None


def download_dataset(name: str, root: str | os.PathLike | None = None, urls: Sequence[str] | None = None, *,
                     timeout: float = 60.0, retries: int = 3, force: bool = False, keep_archive: bool = False,
                     progress: bool = True, backoff: float = 1.0) -> DownloadReport:
    """Download data set ``name`` (a key of `DATASETS`) into ``<root>/<folder>/``.

    Args:
        name: "omniglot", "cifar10" or "cifar10c".
        root: the data root (default $METALEARN_DATA; created if needed).
        urls: mirrors to try before the official URL. A URL ending in "/" is a folder: the file name is
            appended (so one mirror serves every file of a data set); otherwise it is the URL of the file (only
            for data sets of one file).
        timeout: as in [`download_file`][metalearn.data.download.download_file].
        retries: as in [`download_file`][metalearn.data.download.download_file].
        force: delete files already present (a checksum mismatch) and download again.
        keep_archive: CIFAR-10-C: keep ``CIFAR-10-C.tar`` after extracting the ``.npy`` files.
        progress: as in [`download_file`][metalearn.data.download.download_file].
        backoff: as in [`download_file`][metalearn.data.download.download_file].

    Returns:
        a [`DownloadReport`][metalearn.data.download.DownloadReport].
    """
    if name not in DATASETS:
        raise ValueError(f"dataset: expected one of {sorted(DATASETS)}, got {name!r}")
    spec = DATASETS[name]
    urls = list(urls or [])
    if any(not u.endswith("/") for u in urls) and len(spec.files) > 1:
        raise ValueError(f"--url: {name} has {len(spec.files)} files ({', '.join(f.name for f in spec.files)}); "
                         "give a mirror folder ending in '/' (the file names are appended)")
    folder = _root(root) / spec.folder
    folder.mkdir(parents=True, exist_ok=True)
    if spec.extract is not None and not force:
        done = _extracted(folder)
        if done is not None:
            return DownloadReport(name, folder, done, [], [p.name for p in done])
    downloaded, skipped, files = [], [], []
    for rf in spec.files:
        dest = folder / rf.name
        if force and dest.exists():
            dest.unlink()
        existed = dest.is_file()
        mirrors = [u + rf.name if u.endswith("/") else u for u in urls]
        download_file(mirrors + [rf.url], dest, rf.sha256, rf.size, md5=rf.md5, timeout=timeout, retries=retries,
                      backoff=backoff, progress=progress)
        (skipped if existed else downloaded).append(rf.name)
        files.append(dest)
    if spec.extract is not None:
        extracted = spec.extract(files[0], folder, progress)
        if not keep_archive:
            for f in files:
                f.unlink()
        else:
            record_checksums(folder, {rf.name: rf.sha256 for rf in spec.files})
        files = extracted
    else:
        record_checksums(folder, {rf.name: rf.sha256 for rf in spec.files})
    return DownloadReport(name, folder, files, downloaded, skipped)
