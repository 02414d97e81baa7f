"""metalearn report: tables and plots from fixture result JSON, exact formatting, markers, bad input."""
import json
import sys

import pytest

from metalearn import report
from metalearn.bench import RESULT_KIND, SCHEMA_VERSION
from metalearn.cli import main
from metalearn.config import ConfigError

PROSE_TOP = "# Results\n\nHand-written introduction that must survive.\n\n"
PROSE_MID = "\n\nProse between the blocks.\n\n"
PROSE_END = "\n\n## Earlier runs\n\nHand-written numbers: 98.29 ± 0.18.\n"
MACHINE = {"platform": "Linux-x86_64", "python": "3.11.7", "torch": "2.13.0+cpu", "cpu_count": 2,
           "cpu_model": "AMD EPYC", "torch_threads": 2, "gpu": None}


def fake_hash(name):
    """A 16-hex-digit config hash that spells the name (result files hold only hex hashes)."""
    return (name.encode().hex() + "0" * 16)[:16]


def make_result(name, accuracy, ci95, ref=None, ref_ci=None, *, config_hash=None, commit="c" * 40, dirty=False,
                created="2026-01-02T03:04:05+00:00", ways=5, shots=1, gpu=None, curve=True, dataset="omniglot"):
    steps = [10, 20, 30]
    return {
        "schema_version": SCHEMA_VERSION, "kind": RESULT_KIND, "name": name, "task": f"tasks/{name}.yaml",
        "suite": "tasks/suites/x.yaml", "config": {"dataset": dataset, "name": name},
        "config_hash": config_hash or fake_hash(name), "overrides": [], "seed": 0, "eval_seed": 1234,
        "dataset": dataset, "learner": "protonet", "split": "test", "ways": ways, "shots": shots, "queries": 15,
        "episodes": 1000, "accuracy": accuracy, "ci95": ci95,
        "reference": {"accuracy": ref, "ci95": ref_ci, "source": "Snell et al. 2017" if ref is not None else ""},
        "train": {"steps": 30, "best_step": 30, "best_val_accuracy": 97.0, "wall_s": 125.0, "sessions": 1},
        "eval_wall_s": 3.5, "peak_memory": {"bytes": 3 * 2 ** 29, "kind": "process_max_rss", "device": "cpu"},
        "git": {"commit": commit, "dirty": dirty}, "machine": dict(MACHINE, gpu=gpu), "device": "cpu",
        "command": f"metalearn bench tasks/{name}.yaml", "train_command": "metalearn train ...",
        "run_dir": f"runs/bench/{name}", "created": created,
        "curve": {"step": steps if curve else [], "loss": [1.5, 0.9, 0.5] if curve else [],
                  "train_accuracy": [60.0, 80.0, 90.0] if curve else [], "val_step": [30] if curve else [],
                  "val_accuracy": [91.0] if curve else []},
    }


def write(results_dir, *items):
    results_dir.mkdir(parents=True, exist_ok=True)
    for i, r in enumerate(items):
        (results_dir / f"{i:02d}-{r['name']}.json").write_text(json.dumps(r))


@pytest.fixture
def docs(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "results.md").write_text(
        PROSE_TOP + report.begin_marker(report.TABLE) + "\nold table\n" + report.end_marker(report.TABLE) + PROSE_MID
        + report.begin_marker(report.PLOTS) + "\nold plots\n" + report.end_marker(report.PLOTS) + PROSE_END)
    return d


def table_rows(text):
    return [ln for ln in text.splitlines() if ln.startswith("| ") and not ln.startswith("| # ")]


def test_formatting_helpers_exact():
    assert report.fmt_acc(98.2912, 0.1789) == "98.29 ± 0.18"
    assert report.fmt_acc(49.42, None) == "49.42"
    assert report.fmt_delta(98.29, 98.8) == "-0.51"
    assert report.fmt_delta(99.404, 99.0) == "+0.40"
    assert report.fmt_delta(50.0, None) == "—"
    assert report.published_inside_ci(98.29, 0.18, 98.47) is True        # on the upper edge
    assert report.published_inside_ci(98.29, 0.18, 98.11) is True        # on the lower edge
    assert report.published_inside_ci(98.29, 0.18, 98.48) is False
    assert report.published_inside_ci(98.29, 0.18, 98.10) is False
    assert report.published_inside_ci(98.29, 0.18, None) is None
    assert report.fmt_duration(45.2) == "45 s" and report.fmt_duration(1860) == "31 min"
    assert report.fmt_duration(3 * 3600) == "3.0 h"
    assert report.fmt_bytes(3 * 2 ** 29) == "1.5 GiB" and report.fmt_bytes(500 * 2 ** 20) == "500.0 MiB"


def test_report_tables_and_plots_from_fixture_json(tmp_path, docs, capsys):
    write(tmp_path / "results",
          make_result("omni_20w1s", 94.35, 0.17, 96.0, ways=20),                       # published outside our CI
          make_result("omni_5w1s", 98.70, 0.18, 98.8),                                 # inside
          make_result("mini_5w5s", 66.004, 0.655, 68.20, 0.66, commit="d" * 40, dirty=True,
                      gpu="NVIDIA H100 80GB HBM3", shots=5, dataset="miniimagenet"),
          make_result("digits_5w5s", 84.391, 0.312, None, shots=5, curve=False, dataset="digits"))  # no published
    assert main(["report", "--results", str(tmp_path / "results"), "--docs", str(docs)]) == 0
    assert "4 rows from 4 result files" in capsys.readouterr().out
    text = (docs / "results.md").read_text()
    # the hand-written prose is kept, the old generated text is gone
    assert text.startswith(PROSE_TOP) and PROSE_MID in text and text.endswith(PROSE_END)
    assert "old table" not in text and "old plots" not in text
    rows = table_rows(text)
    assert rows == [  # sorted by dataset, learner, ways, shots
        "| 1 | digits_5w5s | digits | 5-way 5-shot | 84.39 ± 0.31 | 1000 | — | — | — | 30 | 2 min "
        "| 1.5 GiB RSS | `cccccccc` | CPU: AMD EPYC, 2 cores, 2 threads; torch 2.13.0+cpu |",
        "| 2 | mini_5w5s | miniimagenet | 5-way 5-shot | 66.00 ± 0.66 | 1000 | 68.20 ± 0.66 | -2.20 | no | 30 "
        "| 2 min | 1.5 GiB RSS | `dddddddd` (dirty) | GPU: NVIDIA H100 80GB HBM3; torch 2.13.0+cpu |",
        "| 3 | omni_5w1s | omniglot | 5-way 1-shot | 98.70 ± 0.18 | 1000 | 98.80 | -0.10 | yes | 30 | 2 min "
        "| 1.5 GiB RSS | `cccccccc` | CPU: AMD EPYC, 2 cores, 2 threads; torch 2.13.0+cpu |",
        "| 4 | omni_20w1s | omniglot | 20-way 1-shot | 94.35 ± 0.17 | 1000 | 96.00 | -1.65 | no | 30 | 2 min "
        "| 1.5 GiB RSS | `cccccccc` | CPU: AMD EPYC, 2 cores, 2 threads; torch 2.13.0+cpu |",
    ]
    assert f"3. `metalearn bench tasks/omni_5w1s.yaml` (seed 0, config `{fake_hash('omni_5w1s')}`, 2026-01-02). " \
           "Published: Snell et al. 2017." in text
    # plots: the bars and one curve per result that has a curve, all linked from results.md
    pngs = sorted(p.name for p in (docs / "img").glob("*.png"))
    assert pngs == ["bench-accuracy.png"] + sorted(f"bench-curve-{n}-{fake_hash(n)}.png"
                                                   for n in ("mini_5w5s", "omni_20w1s", "omni_5w1s"))
    for p in (docs / "img").glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 5000
        assert f"](img/{p.name})" in text

    # idempotent: a second report changes nothing (text and images byte for byte)
    before = {p.name: p.read_bytes() for p in (docs / "img").glob("*.png")}
    assert main(["report", "--results", str(tmp_path / "results"), "--docs", str(docs)]) == 0
    assert (docs / "results.md").read_text() == text
    assert {p.name: p.read_bytes() for p in (docs / "img").glob("*.png")} == before


def test_newest_result_per_config_and_stale_plots_removed(tmp_path, docs):
    old = make_result("omni_5w1s", 97.00, 0.20, 98.8, commit="1" * 40, created="2026-01-01T00:00:00+00:00")
    new = make_result("omni_5w1s", 98.70, 0.18, 98.8, commit="2" * 40, created="2026-02-01T00:00:00+00:00")
    write(tmp_path / "results", new, old)
    (docs / "img").mkdir()
    (docs / "img" / "bench-curve-gone-0000000000000000.png").write_bytes(b"x")
    (docs / "img" / "hand-made.png").write_bytes(b"x")
    assert main(["report", "--results", str(tmp_path / "results"), "--docs", str(docs)]) == 0
    rows = table_rows((docs / "results.md").read_text())
    assert len(rows) == 1 and "98.70 ± 0.18" in rows[0] and "`22222222`" in rows[0]
    names = {p.name for p in (docs / "img").iterdir()}
    assert "bench-curve-gone-0000000000000000.png" not in names and "hand-made.png" in names


def test_markers_missing_are_appended_and_broken_markers_are_an_error(tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "results.md").write_text("# Results\n\nProse only.\n")
    write(tmp_path / "results", make_result("omni_5w1s", 98.70, 0.18, 98.8))
    assert main(["report", "--results", str(tmp_path / "results"), "--docs", str(d), "--no-plots"]) == 0
    text = (d / "results.md").read_text()
    assert text.startswith("# Results\n\nProse only.\n\n" + report.begin_marker(report.TABLE))
    assert report.begin_marker(report.PLOTS) not in text and not (d / "img").exists()

    (d / "results.md").write_text("# Results\n" + report.begin_marker(report.TABLE) + "\nno end marker\n")
    with pytest.raises(ConfigError, match="expected one .*BEGIN GENERATED: bench-table"):
        report.write_report(tmp_path / "results", d, plots=False)


def test_schema_versions_and_bad_files_give_clear_errors(tmp_path, docs, capsys):
    res = tmp_path / "results"
    write(res, make_result("omni_5w1s", 98.70, 0.18, 98.8))
    before = (docs / "results.md").read_text()
    cases = {
        "old.json": ({**make_result("x", 1.0, 1.0), "schema_version": 0}, "schema_version 0 is older"),
        "new.json": ({**make_result("x", 1.0, 1.0), "schema_version": SCHEMA_VERSION + 1}, "newer metalearn"),
        "other.json": ({"accuracy": 1.0}, "not a metalearn bench result"),
        "nokey.json": ({k: v for k, v in make_result("x", 1.0, 1.0).items() if k != "ci95"}, "without the key 'ci95'"),
    }
    for fname, (data, msg) in cases.items():
        (res / fname).write_text(json.dumps(data))
        assert main(["report", "--results", str(res), "--docs", str(docs)]) == 2
        err = capsys.readouterr().err
        assert fname in err and msg in err and "--skip-invalid" in err
        assert (docs / "results.md").read_text() == before            # nothing written
        (res / fname).unlink()
    (res / "torn.json").write_text('{"schema_version": 1,')
    assert main(["report", "--results", str(res), "--docs", str(docs)]) == 2
    assert "torn.json: line 1" in capsys.readouterr().err
    assert main(["report", "--results", str(res), "--docs", str(docs), "--skip-invalid"]) == 0
    out = capsys.readouterr()
    assert "skipped" in out.err and "torn.json" in out.err and "1 row from 1 result file" in out.out
    assert main(["report", "--results", str(tmp_path / "nope"), "--docs", str(docs)]) == 2
    assert "--results" in capsys.readouterr().err


def test_names_and_hashes_that_would_leave_the_docs_folder_are_refused(tmp_path, docs, capsys):
    res = tmp_path / "results"
    before = (docs / "results.md").read_text()
    bad = {"name": ["x/../../../../escaped", "../up", ".hidden", "a b", "", "n" * 201],
           "config_hash": ["../../../escaped", "ABCDEF0123456789", "0123", "0123456789abcdef/.."]}
    for key, values in bad.items():
        for value in values:
            res.mkdir(exist_ok=True)
            (res / "00-result.json").write_text(json.dumps({**make_result("omni_5w1s", 98.70, 0.18, 98.8), key: value}))
            assert main(["report", "--results", str(res), "--docs", str(docs)]) == 2
            err = capsys.readouterr().err
            assert f"{key}: expected" in err and repr(value) in err and "Traceback" not in err
            assert (docs / "results.md").read_text() == before and not (docs / "img").exists()
            assert not list(tmp_path.rglob("*escaped*"))
    # what bench writes is accepted
    (res / "00-result.json").write_text(json.dumps(make_result("protonet_omniglot_5w1s-v2.1", 98.70, 0.18, 98.8,
                                                               config_hash="0123456789abcdef")))
    assert main(["report", "--results", str(res), "--docs", str(docs), "--no-plots"]) == 0


def test_missing_matplotlib_names_the_extra(tmp_path, docs, monkeypatch, capsys):
    write(tmp_path / "results", make_result("omni_5w1s", 98.70, 0.18, 98.8))
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["report", "--results", str(tmp_path / "results"), "--docs", str(docs)]) == 2
    err = capsys.readouterr().err
    assert "'matplotlib'" in err and "metalearn[report]" in err and "--no-plots" in err
    assert "old table" in (docs / "results.md").read_text()            # nothing written
    assert main(["report", "--results", str(tmp_path / "results"), "--docs", str(docs), "--no-plots"]) == 0
    assert "98.70 ± 0.18" in (docs / "results.md").read_text()
