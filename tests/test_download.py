"""``metalearn data download`` / ``data check`` end to end against a local HTTP server on 127.0.0.1.

The server serves small archives the tests build (never the real files): a plain success, a connection cut in
the middle (the download resumes with an HTTP Range request), a server that ignores Range, a wrong checksum, a
404, and a server that stalls (the download gives up after the timeout, within a few seconds).
"""
from __future__ import annotations

import hashlib
import io
import socket
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from metalearn.cli import main
from metalearn.data import download as dl
from metalearn.data.check import check_data
from metalearn.data.download import ChecksumError, DownloadError, RemoteDataset, RemoteFile, download_file

from test_data_omniglot import make_tiny_omniglot


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Server:
    """files: {url path: bytes}; modes: {url path: "cut" (first answer sends half the bytes, then closes),
    "stall" (headers and a few bytes, then silence), "norange" (Range ignored: always 200)}."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.modes: dict[str, str] = {}
        self.requests: list[tuple[str, str | None]] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                rng = self.headers.get("Range")
                server.requests.append((self.path, rng))
                data = server.files.get(self.path)
                if data is None:
                    self.send_error(404, "Not Found")
                    return
                mode = server.modes.get(self.path)
                start = 0
                if rng and mode != "norange":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if mode == "cut":
                    server.modes.pop(self.path)          # only the first answer is cut
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "stall":
                    self.wfile.write(body[:10])
                    self.wfile.flush()
                    server.stop.wait(5)                  # longer than the client's timeout
                    return
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


PAYLOAD = np.random.default_rng(0).integers(0, 256, 300_000, dtype=np.uint8).tobytes()


def test_download_success_places_the_file_atomically(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "d" / "a.bin"
    out = download_file(server.url + "/a.bin", dest, sha(PAYLOAD), len(PAYLOAD), progress=False)
    assert out == dest and dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "d" / "a.bin.part").exists()
    # already present and verified: no new request
    n = len(server.requests)
    download_file(server.url + "/a.bin", dest, sha(PAYLOAD), len(PAYLOAD), progress=False)
    assert len(server.requests) == n


def test_interrupted_download_resumes_with_range(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.modes["/a.bin"] = "cut"
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="a new run resumes") as e:
        download_file(server.url + "/a.bin", dest, sha(PAYLOAD), len(PAYLOAD), retries=0, progress=False)
    assert server.url + "/a.bin" in str(e.value)
    part = tmp_path / "a.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    download_file(server.url + "/a.bin", dest, sha(PAYLOAD), len(PAYLOAD), retries=0, progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1] == ("/a.bin", f"bytes={have}-")


def test_interruption_is_retried_within_one_call(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.modes["/a.bin"] = "cut"
    dest = tmp_path / "a.bin"
    download_file(server.url + "/a.bin", dest, sha(PAYLOAD), len(PAYLOAD), retries=1, backoff=0, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert [r[1] is not None for r in server.requests] == [False, True]


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.modes["/a.bin"] = "norange"
    dest = tmp_path / "a.bin"
    (tmp_path / "a.bin.part").write_bytes(PAYLOAD[:1000])
    download_file(server.url + "/a.bin", dest, sha(PAYLOAD), len(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_wrong_checksum_names_url_and_expected_digest(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    wrong = "0" * 64
    dest = tmp_path / "a.bin"
    with pytest.raises(ChecksumError) as e:
        download_file(server.url + "/a.bin", dest, wrong, progress=False)
    msg = str(e.value)
    assert server.url + "/a.bin" in msg and wrong in msg and sha(PAYLOAD) in msg
    assert not dest.exists() and not (tmp_path / "a.bin.part").exists()


def test_404_names_the_url_and_a_mirror_list_falls_through(server, tmp_path):
    server.files["/good/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError, match="404") as e:
        download_file(server.url + "/missing/a.bin", dest, sha(PAYLOAD), progress=False)
    assert server.url + "/missing/a.bin" in str(e.value)
    download_file([server.url + "/missing/a.bin", server.url + "/good/a.bin"], dest, sha(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_stalled_server_times_out_quickly(server, tmp_path):
    server.files["/a.bin"] = PAYLOAD
    server.modes["/a.bin"] = "stall"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="stalled"):
        download_file(server.url + "/a.bin", tmp_path / "a.bin", sha(PAYLOAD), timeout=0.5, retries=1,
                      backoff=0, progress=False)
    assert time.monotonic() - t0 < 4


def test_server_that_never_answers_times_out(tmp_path):
    with socket.socket() as s:                # accepts connections (backlog) but never answers
        s.bind(("127.0.0.1", 0))
        s.listen(4)
        url = f"http://127.0.0.1:{s.getsockname()[1]}/a.bin"
        t0 = time.monotonic()
        with pytest.raises(DownloadError, match="no answer within 0.5 s"):
            download_file(url, tmp_path / "a.bin", sha(PAYLOAD), timeout=0.5, retries=0, progress=False)
        assert time.monotonic() - t0 < 3


def test_existing_file_with_wrong_checksum_is_an_error(tmp_path):
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"not it")
    with pytest.raises(ChecksumError, match="--force"):
        download_file("http://127.0.0.1:9/a.bin", dest, sha(PAYLOAD), progress=False)


def _tiny_omniglot_spec(tmp_path: Path, server: Server) -> RemoteDataset:
    src = tmp_path / "src"
    make_tiny_omniglot(src, npz=False, zips=True)
    files = []
    for name in ("images_background.zip", "images_evaluation.zip"):
        data = (src / "omniglot" / name).read_bytes()
        server.files[f"/mirror/{name}"] = data
        files.append(RemoteFile(name, server.url + f"/official/{name}", sha(data), len(data)))
    return RemoteDataset("omniglot", "omniglot", tuple(files), "tiny Omniglot")


def test_cli_download_omniglot_then_the_loader_reads_it(server, tmp_path, monkeypatch, capsys):
    from metalearn.data.omniglot import load_omniglot
    monkeypatch.setitem(dl.DATASETS, "omniglot", _tiny_omniglot_spec(tmp_path, server))
    root = tmp_path / "data"
    # the official URL 404s here; the --url mirror folder serves the files
    rc = main(["data", "download", "omniglot", "--root", str(root), "--url", server.url + "/mirror/", "--quiet"])
    assert rc == 0, capsys.readouterr().err
    assert "downloaded images_background.zip, images_evaluation.zip" in capsys.readouterr().out
    data = load_omniglot(root, split="all", cache_dir=tmp_path / "cache")
    assert data.num_classes == 9 * 4 and data.images.shape[-1] == 28
    sums = (root / "omniglot" / "SHA256SUMS").read_text()
    assert "images_background.zip" in sums and "images_evaluation.zip" in sums
    # data check: the zips verify against their pinned checksums
    rc = main(["data", "check", "--root", str(root)])
    out = capsys.readouterr().out
    assert rc == 0 and "omniglot" in out and "original zips (2 files, sha256 ok)" in out
    # a second download is a no-op
    assert main(["data", "download", "omniglot", "--root", str(root), "--quiet"]) == 0
    assert "nothing to download" in capsys.readouterr().out


def test_cli_download_error_exit_code(server, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(dl.DATASETS, "omniglot", _tiny_omniglot_spec(tmp_path, server))
    rc = main(["data", "download", "omniglot", "--root", str(tmp_path / "d"), "--quiet", "--retries", "0"])
    err = capsys.readouterr().err
    assert rc == 1 and "HTTP 404" in err and "/official/images_background.zip" in err


def test_url_for_a_multi_file_dataset_must_be_a_folder(tmp_path):
    with pytest.raises(ValueError, match="ending in '/'"):
        dl.download_dataset("omniglot", tmp_path, ["http://127.0.0.1:9/images_background.zip"])


def _cifar10c_tar(n: int = 20) -> tuple[bytes, dict]:
    rng = np.random.default_rng(1)
    arrays = {"fog.npy": rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8),
              "snow.npy": rng.integers(0, 256, (5 * n, 32, 32, 3), dtype=np.uint8),
              "labels.npy": np.tile(rng.integers(0, 10, n), 5).astype(np.uint8)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        for name, arr in arrays.items():
            b = io.BytesIO()
            np.save(b, arr)
            info = tarfile.TarInfo(f"CIFAR-10-C/{name}")
            info.size = len(b.getvalue())
            tf.addfile(info, io.BytesIO(b.getvalue()))
    return buf.getvalue(), arrays


def test_cifar10c_download_extracts_the_npy_files(server, tmp_path, monkeypatch):
    data, arrays = _cifar10c_tar()
    server.files["/CIFAR-10-C.tar"] = data
    spec = RemoteDataset("cifar10c", "cifar10c", (RemoteFile("CIFAR-10-C.tar", server.url + "/CIFAR-10-C.tar",
                                                              sha(data), len(data)),), "tiny", dl.CIFAR10C.extract)
    monkeypatch.setitem(dl.DATASETS, "cifar10c", spec)
    report = dl.download_dataset("cifar10c", tmp_path, progress=False)
    folder = tmp_path / "cifar10c"
    assert sorted(p.name for p in report.files) == sorted(arrays)
    assert not (folder / "CIFAR-10-C.tar").exists()        # removed after extraction (keep_archive=False)
    for name, arr in arrays.items():
        assert np.array_equal(np.load(folder / name), arr)
    n = len(server.requests)
    again = dl.download_dataset("cifar10c", tmp_path, progress=False)   # recorded + verified: nothing fetched
    assert again.downloaded == [] and len(server.requests) == n
    res = check_data(tmp_path)
    rows = {f.path: f.state for fc in res.forms["cifar10c"] for f in fc.files}
    assert rows["cifar10c/fog.npy"] == "ok" and rows["cifar10c/labels.npy"] == "ok"
    assert rows["cifar10c/frost.npy"] == "missing" and res.status("cifar10c") == "partial"


def test_data_check_reports_a_mismatch(tmp_path, capsys):
    folder = tmp_path / "mnist"
    folder.mkdir()
    (folder / "mnist.npz").write_bytes(b"changed")
    (folder / "SHA256SUMS").write_text(f"{sha(b'original')}  mnist.npz\n")
    rc = main(["data", "check", "--root", str(tmp_path)])
    out = capsys.readouterr().out
    assert rc == 1 and "damaged" in out and sha(b"original") in out and sha(b"changed") in out
    assert "omniglot" in out and "metalearn data download omniglot" in out   # missing, with the way to get it


def test_pinned_checksums_are_well_formed():
    for spec in dl.DATASETS.values():
        for f in spec.files:
            assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0 and f.size > 0
            assert f.url.startswith("https://")
    assert dl.OMNIGLOT.files[0].url.startswith("https://github.com/brendenlake/omniglot/")
    assert dl.CIFAR10.files[0].url.startswith("https://www.cs.toronto.edu/~kriz/")
    assert "zenodo.org/record/2535967" in dl.CIFAR10C.files[0].url
