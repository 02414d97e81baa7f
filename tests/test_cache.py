"""metalearn.data.cache: checksums, atomic writes, the uint8 array cache (fast, synthetic)."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from metalearn.data import cache


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def test_sha256_file(tmp_path):
    p = tmp_path / "x.bin"
    data = np.random.default_rng(0).bytes(3 * (1 << 20) + 17)  # several chunks
    p.write_bytes(data)
    assert cache.sha256_file(p) == hashlib.sha256(data).hexdigest()


def test_make_key_depends_on_parts():
    assert cache.make_key("a", 1) == cache.make_key("a", 1)
    assert cache.make_key("a", 1) != cache.make_key("a", 2)
    assert cache.make_key({"x": 1, "y": 2}) == cache.make_key({"y": 2, "x": 1})


def test_atomic_write_replaces_on_success(tmp_path):
    p = tmp_path / "f.txt"
    with cache.atomic_write(p, "w") as f:
        f.write("one")
    with cache.atomic_write(p) as f:
        f.write(b"two")
    assert p.read_bytes() == b"two"
    assert _leftovers(tmp_path) == []


def test_atomic_write_interrupted_keeps_previous(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"good")
    with pytest.raises(RuntimeError):
        with cache.atomic_write(p) as f:
            f.write(b"half-writ")
            raise RuntimeError("interrupted")
    assert p.read_bytes() == b"good"
    assert _leftovers(tmp_path) == []
    q = tmp_path / "new.bin"
    with pytest.raises(RuntimeError):
        with cache.atomic_write(q) as f:
            raise RuntimeError("interrupted")
    assert not q.exists() and _leftovers(tmp_path) == []


def test_atomic_write_bad_mode(tmp_path):
    with pytest.raises(ValueError, match="mode"):
        with cache.atomic_write(tmp_path / "x", "a"):
            pass


def _entry(tmp_path, seed=0, shape=(6, 1, 5, 5)):
    x = np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)
    path = tmp_path / "sub" / "entry"
    cache.save_uint8_cache(path, x, {"names": ["a", "b"], "counts": [3, 3]}, key="k1")
    return path, x


def test_roundtrip(tmp_path):
    path, x = _entry(tmp_path)
    npy, js = cache.cache_entry_files(path)
    assert npy.name == "entry.npy" and js.name == "entry.json"
    record = json.loads(js.read_text())
    assert record["shape"] == list(x.shape) and record["dtype"] == "uint8" and record["key"] == "k1"
    assert record["sha256"] == cache.sha256_file(npy) and record["npy_bytes"] == npy.stat().st_size
    got, meta = cache.load_uint8_cache(path, "k1")
    assert isinstance(got, np.memmap) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, x)
    assert meta == {"names": ["a", "b"], "counts": [3, 3]}
    got[0] = 0  # copy-on-write map: writable, the file is untouched
    np.testing.assert_array_equal(cache.load_uint8_cache(path, "k1")[0], x)
    assert cache.load_uint8_cache(path, None) is not None  # key check skipped


def test_missing_and_stale_entries_return_none(tmp_path):
    assert cache.load_uint8_cache(tmp_path / "nothing", "k") is None
    path, _ = _entry(tmp_path)
    assert cache.load_uint8_cache(path, "other-key") is None
    cache.cache_entry_files(path)[0].unlink()
    assert cache.load_uint8_cache(path, "k1") is None


def test_rejects_non_uint8(tmp_path):
    with pytest.raises(ValueError, match="uint8"):
        cache.save_uint8_cache(tmp_path / "e", np.zeros((2, 2), np.float32), {})


def test_truncated_npy_raises_with_file_name(tmp_path):
    path, _ = _entry(tmp_path)
    npy = cache.cache_entry_files(path)[0]
    npy.write_bytes(npy.read_bytes()[:-10])
    with pytest.raises(ValueError, match=r"entry\.npy.*truncated"):
        cache.load_uint8_cache(path, "k1")


def test_corrupted_npy_raises_with_file_name(tmp_path):
    path, _ = _entry(tmp_path)
    npy = cache.cache_entry_files(path)[0]
    b = bytearray(npy.read_bytes())
    b[-1] ^= 0xFF
    npy.write_bytes(bytes(b))
    with pytest.raises(ValueError, match=r"entry\.npy.*sha256"):
        cache.load_uint8_cache(path, "k1")
    assert cache.load_uint8_cache(path, "k1", verify=False) is not None  # size-only check passes


def test_corrupted_json_raises_with_file_name(tmp_path):
    path, _ = _entry(tmp_path)
    js = cache.cache_entry_files(path)[1]
    js.write_text(js.read_text()[:20])
    with pytest.raises(ValueError, match=r"entry\.json"):
        cache.load_uint8_cache(path, "k1")


def test_interrupted_save_keeps_previous_entry(tmp_path, monkeypatch):
    path, x = _entry(tmp_path)
    npy, js = cache.cache_entry_files(path)
    before = npy.read_bytes(), js.read_bytes()

    def broken_save(f, arr, allow_pickle=False):
        f.write(b"\x93NUMPY partial")
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of writing

    monkeypatch.setattr(cache.np, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        cache.save_uint8_cache(path, np.ones((9, 1, 5, 5), np.uint8), {"names": []}, key="k2")
    monkeypatch.undo()
    assert (npy.read_bytes(), js.read_bytes()) == before
    assert _leftovers(npy.parent) == []
    got, _ = cache.load_uint8_cache(path, "k1")
    np.testing.assert_array_equal(got, x)


def test_progress_disabled_is_noop():
    with cache.progress(10, "x", enabled=False) as bar:
        bar.update(3)
