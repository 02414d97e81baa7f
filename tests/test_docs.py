"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing nav files and docstring
warnings fail it), and the key pages land in the output."""
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

KEY_PAGES = [
    "index.html",
    "getting-started/benchmarker/index.html",
    "getting-started/library-user/index.html",
    "getting-started/test-time/index.html",
    "concepts/episodes/index.html",
    "concepts/functional/index.html",
    "concepts/vmap-batchnorm/index.html",
    "porting/torchmeta/index.html",
    "porting/learn2learn/index.html",
    "porting/higher/index.html",
    "reference/episodes/index.html",
    "reference/protonet/index.html",
    "results/index.html",
    "errors/index.html",
]

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
    reason="mkdocs / mkdocstrings not installed (they are in the [dev] extra: pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    return out


@pytest.mark.parametrize("page", KEY_PAGES)
def test_key_page_built(site, page):
    assert (site / page).is_file(), f"{page} missing from the built site"


def test_api_reference_rendered_from_docstrings(site):
    html = (site / "reference" / "episodes" / "index.html").read_text(encoding="utf-8")
    assert "EpisodeSampler" in html and "seeds a" in html     # the class and its Args docstring
    html = (site / "reference" / "protonet" / "index.html").read_text(encoding="utf-8")
    assert "prototypes" in html and "Snell et al. 2017" in html
