"""The documentation site builds with ``mkdocs build --strict`` (broken links, missing nav files and docstring
warnings fail it), the key pages land in the output, and the API reference is complete: every public name of
``metalearn.__all__`` has an entry, every field of a configuration dataclass is documented, and no docstring
renders a Sphinx role or an example as prose."""
import ast
import dataclasses
import functools
import importlib
import importlib.util
import re
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
    "reference/index.html",
    "reference/episodes/index.html",
    "reference/protonet/index.html",
    "reference/config/index.html",
    "results/index.html",
    "errors/index.html",
    "load_model/index.html",
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


# ----------------------------------------------------------------------------------- the API reference is complete

def _public_names() -> dict[str, str]:
    """``{name: "module.name"}`` for every name of ``metalearn.__all__``, read from ``metalearn/__init__.py``
    (``from M import X as X``), without importing the package."""
    tree = ast.parse((ROOT / "metalearn" / "__init__.py").read_text(encoding="utf-8"))
    imports, exported = {}, None
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("metalearn"):
            for a in node.names:
                imports[a.asname or a.name] = f"{node.module}.{a.name}"
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets):
            exported = ast.literal_eval(node.value)
    assert exported, "metalearn/__init__.py defines no __all__"
    missing = [n for n in exported if n != "__version__" and n not in imports]
    assert not missing, f"names of __all__ not imported with 'from metalearn... import X as X': {missing}"
    return {n: imports[n] for n in exported if n != "__version__"}


@functools.lru_cache(maxsize=1)
def _griffe_package():
    """The package as mkdocstrings sees it: loaded statically by griffe, docstrings parsed as Google style."""
    import griffe
    return griffe.load("metalearn", search_paths=[str(ROOT)], docstring_parser="google")


def _canonical(dotted: str) -> str:
    """Where ``module.name`` is defined (following re-exports such as ``metalearn.optim.LSTMOptimizer``): the
    identifier mkdocstrings gives its entry."""
    module, name = dotted.rsplit(".", 1)
    obj = _griffe_package().modules_collection[module].members[name]   # not a same-named submodule
    return obj.final_target.path if obj.is_alias else obj.path


def _reference_pages(site: Path) -> dict[str, str]:
    return {str(p.relative_to(site)): p.read_text(encoding="utf-8") for p in (site / "reference").rglob("*.html")}


def test_every_public_name_has_a_reference_entry(site):
    pages = _reference_pages(site)
    ids = set()
    for html in pages.values():
        ids.update(re.findall(r'id="(metalearn\.[^"]+)"', html))
    names = _public_names()
    assert len(names) > 30
    missing = {n: _canonical(d) for n, d in names.items() if _canonical(d) not in ids}
    assert not missing, ("public names of metalearn.__all__ with no entry in the API reference (add a docstring, "
                         f"and a '::: module' block to a page of docs/reference/ if the module has none): {missing}")


def test_package_page_lists_every_public_name(site):
    html = (site / "reference" / "index.html").read_text(encoding="utf-8")
    missing = [n for n, d in _public_names().items() if f'#{_canonical(d)}"' not in html]
    assert not missing, f"docs/reference/index.md does not link these names of metalearn.__all__: {missing}"


CONFIG_CLASSES = [
    "metalearn.config.TaskConfig", "metalearn.config.DataConfig", "metalearn.config.ModelConfig",
    "metalearn.config.MamlConfig", "metalearn.config.MatchnetConfig", "metalearn.config.TrainConfig",
    "metalearn.config.EvalConfig", "metalearn.config.SiameseConfig", "metalearn.config.Reference",
    "metalearn.ttt.config.TTTTaskConfig", "metalearn.ttt.config.TTTModelConfig",
    "metalearn.ttt.config.TTTAdaptConfig", "metalearn.ttt.config.TentConfig", "metalearn.ttt.config.TTTEvalConfig",
    "metalearn.ttt.config.TTTDataConfig", "metalearn.ttt.config.TTTSSLConfig", "metalearn.ttt.train.JointTrainConfig",
    "metalearn.optim.meta.MetaTrainConfig", "metalearn.optim.lstm.LSTMOptimizerConfig",
]


@pytest.mark.parametrize("path", CONFIG_CLASSES)
def test_config_dataclass_documents_every_field(site, path):
    """Each field has a line in the class's ``Attributes:`` section, and the rendered table shows its default."""
    module, name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module), name)
    fields = [f.name for f in dataclasses.fields(cls)]
    obj = _griffe_package().modules_collection[module].members[name]
    assert obj.docstring is not None, f"{path} has no docstring"
    sections = [s for s in obj.docstring.parsed if s.kind.value == "attributes"]
    documented = [a.name for s in sections for a in s.value]
    undocumented = [f for f in fields if f not in documented]
    assert not undocumented, f"{path}: fields without a line in the Attributes: section: {undocumented}"
    stale = [a for a in documented if a not in fields]
    assert not stale, f"{path}: the Attributes: section names fields the class does not have: {stale}"
    html = next((h for h in _reference_pages(site).values() if f'id="{path}"' in h), None)
    assert html is not None, f"{path} has no entry in the API reference"
    entry = html.split(f'id="{path}"', 1)[1]
    table = entry.split('<table class="doc-attributes">', 1)[1].split("</table>", 1)[0]
    assert "<th>Default</th>" in table
    for f in fields:
        assert f"<code>{f}</code>" in table, f"{path}.{f} is missing from the rendered fields table"


def test_docstrings_render_as_markdown(site):
    """No Sphinx role or reStructuredText block survives as literal text, and examples render as code."""
    bad = {}
    for page, html in _reference_pages(site).items():
        text = re.sub(r"<pre.*?</pre>", "", html, flags=re.S)            # code blocks may show anything
        found = re.findall(r":(?:class|func|meth|mod|attr|data|obj|exc):", text)
        found += re.findall(r"<p>[^<]*&gt;&gt;&gt;", text)              # a doctest shown as prose
        found += re.findall(r"<p>[^<]*```", text)                        # an unrendered fence
        found += re.findall(r"<p>(?:Example|Examples)::?</p>", text)     # an example heading with its code as prose
        if found:
            bad[page] = found[:5]
    assert not bad, f"docstrings that do not render as Markdown (use mkdocstrings links and Examples:): {bad}"


def test_theme_css_wraps_code_and_tables(site):
    """Code blocks and tables wrap instead of being cut off at the edge of the text column."""
    css = (site / "css" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.rst-content pre code\s*\{[^}]*white-space:\s*pre-wrap", css)
    assert re.search(r"table td,[^{]*\{[^}]*white-space:\s*normal", css)
    page = (site / "reference" / "protonet" / "index.html").read_text(encoding="utf-8")
    assert 'href="../../css/extra.css"' in page
