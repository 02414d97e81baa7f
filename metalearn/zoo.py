"""The model zoo: trained models behind reproduced rows of docs/results.md, shipped with the package.

``metalearn/zoo/manifest.json`` lists each model: its name (the task name of the row it reproduces), the
resolved task config, the commit and config hash of the run, the result it reproduces (ours and published),
the weights file and its sha256, and the first test episodes' accuracies (for a quick re-check). Weights are
the fp32 state dict of ``best.pt`` (Conv4: about 0.45 MB). Only models whose row reproduced the published
number (the published mean inside our 95% CI, or below our mean) are added ([`add_model`][metalearn.zoo.add_model]).

Examples:
    ```python
    import metalearn
    metalearn.pretrained()                        # what exists, with each model's measured accuracy
    learner = metalearn.pretrained("protonet_omniglot_5w1s")   # a Learner in eval mode
    logits = learner.predict(episode)
    ```
"""
from __future__ import annotations

import hashlib
import json
import re
import os
from pathlib import Path

import torch

ZOO_DIR = Path(__file__).resolve().parent / "zoo"
MANIFEST = ZOO_DIR / "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def manifest(zoo_dir: str | os.PathLike = ZOO_DIR) -> dict:
    """``{name: entry}`` of the zoo (empty if it has no manifest)."""
    path = Path(zoo_dir) / "manifest.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    return {m["name"]: m for m in data.get("models", [])}


def pretrained(name: str | None = None, *, device: str | torch.device = "cpu",
               zoo_dir: str | os.PathLike = ZOO_DIR):
    """A trained learner from the zoo, ready for [`metalearn.evaluate`][metalearn.train.evaluator.evaluate] or
    ``.predict``; with no name, the list of what exists.

    With a name it returns the learner, in eval mode. Without, it returns one dict per reproduced row, sorted by
    name, with ``name`` (the row's task name), ``model`` (the weights' entry: one model can serve several rows,
    as the 1-shot ProtoNet serves 5-way and 20-way), ``dataset``, ``learner``, ``ways``, ``shots``,
    ``accuracy``, ``ci95``, ``published``, ``task`` and ``commit`` (an empty list when the zoo ships no model).
    The weights file's sha256 is checked against the manifest before loading (``weights_only`` loading).

    Args:
        name: The task name of a row the model reproduces (e.g. ``"protonet_omniglot_5w1s"``, or
            ``"protonet_omniglot_20w1s"`` for the same weights); None lists the rows.
        device: Where the learner goes.
        zoo_dir: The zoo folder (default: the one shipped in the package).

    Raises:
        ValueError: No model of that name (the message lists the available ones), or weights whose sha256
            differs from the manifest's.
        FileNotFoundError: The manifest names a weights file that is missing.
    """
    entries = manifest(zoo_dir)
    if name is None:
        return sorted(({"name": row["name"], "model": e["name"], "dataset": e["config"]["dataset"],
                        "learner": e["config"]["learner"], "ways": row["ways"], "shots": row["shots"],
                        "accuracy": row["accuracy"], "ci95": row["ci95"], "published": row.get("published"),
                        "task": e.get("task"), "commit": e.get("commit")}
                       for e in entries.values() for row in _rows(e)), key=lambda m: m["name"])
    e, _ = lookup(name, zoo_dir)
    name = e["name"]
    weights = Path(zoo_dir) / e["weights"]
    if not weights.is_file():
        raise FileNotFoundError(f"pretrained {name!r}: weights file {str(weights)!r} is missing")
    digest = _sha256(weights)
    if digest != e["sha256"]:
        raise ValueError(f"pretrained {name!r}: {weights.name} has sha256 {digest}, the manifest expects "
                         f"{e['sha256']} (a corrupted or altered file)")
    from metalearn.builders import build_learner
    from metalearn.config import config_from_dict
    cfg = config_from_dict(e["config"])
    learner = build_learner(cfg, tuple(e["image_shape"]))
    state = torch.load(weights, map_location="cpu", weights_only=True)
    learner.load_state_dict(state)
    return learner.to(device).eval()


def _rows(entry: dict) -> list[dict]:
    """Every row a manifest entry's weights reproduce: its own (``result``), then the ``rows`` added later."""
    return [{"name": entry["name"], **entry["result"]}, *entry.get("rows", [])]


def lookup(name: str, zoo_dir: str | os.PathLike = ZOO_DIR) -> tuple[dict, dict]:
    """The manifest entry whose weights reproduce the row ``name``, and that row's record.

    Args:
        name: A row's task name (an entry's own or one of its ``rows``).
        zoo_dir: The zoo folder (default: the one shipped in the package).

    Raises:
        ValueError: No model reproduces a row of that name (the message lists the available ones).
    """
    entries = manifest(zoo_dir)
    for e in entries.values():
        for row in _rows(e):
            if row["name"] == name:
                return e, row
    have = ", ".join(sorted(r["name"] for e in entries.values() for r in _rows(e))) or "none yet"
    raise ValueError(f"pretrained: no model {name!r} in the zoo; available: {have}")


def reproduces(accuracy: float, ci95: float, published: float | None) -> bool:
    """The row's target: the published mean inside our 95% CI, or below our mean."""
    return published is not None and (published <= accuracy + ci95)


def add_model(result_json: str | os.PathLike, run_dir: str | os.PathLike | None = None, *,
              name: str | None = None, zoo_dir: str | os.PathLike = ZOO_DIR, first_episodes: int = 20,
              task: str | None = None) -> dict:
    """Add the model behind a bench result (or an eval JSON with its run) to the zoo, if its row reproduced.

    Writes ``zoo/NAME.pt`` (the fp32 state dict of ``best.pt``) and its manifest entry, with the accuracies of
    the first test episodes for a quick re-check.

    Args:
        result_json: A ``metalearn bench`` result file (``results/NAME-HASH-COMMIT.json``).
        run_dir: Its run directory (default: the one the result names).
        name: The model's name (default: the result's task name).
        zoo_dir: The zoo folder (default: the one shipped in the package).
        first_episodes: How many test episodes the entry records for the re-check.
        task: The task file to record (default: the result's).

    Returns:
        The manifest entry.

    Raises:
        ValueError: The row did not reproduce the published number (see
            [`reproduces`][metalearn.zoo.reproduces]).
    """
    from metalearn.builders import build_learner
    from metalearn.cli import _episode_sampler
    from metalearn.config import config_from_dict
    from metalearn.data.cache import atomic_write
    from metalearn.train.checkpoint import load_checkpoint
    from metalearn.train.evaluator import evaluate

    res = json.loads(Path(result_json).read_text())
    ev = res["eval"] if "eval" in res else res
    published = published_now(res)
    if not reproduces(ev["accuracy"], ev["ci95"], published):
        raise ValueError(f"{result_json}: {ev['accuracy']:.2f} ± {ev['ci95']:.2f} does not reproduce the published "
                         f"{published}; only reproduced rows go into the zoo")
    model_from = res.get("model_from") or {}
    run_dir = Path(run_dir or model_from.get("run_dir") or res["run_dir"])
    commit = (res.get("git") or {}).get("commit")
    trained_at = re.fullmatch(r".+-[0-9a-f]{16}-([0-9a-f]{8})", run_dir.name)
    if model_from and trained_at:    # a --model-from row: the commit its model was trained at (the run's name)
        commit = trained_at.group(1)
    ck = load_checkpoint(run_dir / "best.pt")
    meta = ck["meta"]
    cfg = config_from_dict(meta["config"])
    if name is None:
        name = res.get("name") or cfg.name
    zoo = Path(zoo_dir)
    zoo.mkdir(parents=True, exist_ok=True)
    weights = zoo / f"{name}.pt"
    # floating tensors in fp32; the rest as saved (integer buffers, a module's extra state such as an RNG state)
    state = {k: v.detach().float().contiguous() if isinstance(v, torch.Tensor) and v.is_floating_point() else v
             for k, v in ck["model"].items()}
    # the first test episodes' accuracies, for a quick re-check of the shipped weights (fp32); computed before
    # anything is written, so a failure (no data, say) leaves the zoo as it was
    e = cfg.eval
    learner = build_learner(cfg, tuple(meta["image_shape"]))
    learner.load_state_dict(state)
    sampler = _episode_sampler(cfg, e.split, ev["ways"], ev["shots"], ev.get("queries", e.queries), e.batch_size,
                               e.seed)
    check = evaluate(learner, sampler, first_episodes, precision="fp32")
    with atomic_write(weights, mode="wb") as f:
        torch.save(state, f)
    entry = {"name": name, "task": task or res.get("task"), "config": meta["config"],
             "config_hash": meta["config_hash"], "image_shape": meta["image_shape"],
             "commit": commit, "step": ck.get("step"),
             "result": {"accuracy": ev["accuracy"], "ci95": ev["ci95"], "episodes": ev["episodes"],
                        "ways": ev["ways"], "shots": ev["shots"], "queries": ev.get("queries", e.queries),
                        "split": ev.get("split", e.split), "seed": e.seed, "published": published,
                        "result_file": Path(result_json).name},
             "check": {"episodes": first_episodes, "precision": "fp32", "per_episode": list(check.per_episode)},
             "weights": weights.name, "sha256": _sha256(weights), "bytes": weights.stat().st_size}
    models = manifest(zoo)
    models[name] = entry
    with atomic_write(zoo / "manifest.json", mode="w") as f:
        json.dump({"schema": 1, "models": [models[k] for k in sorted(models)]}, f, indent=1)
    return entry


def published_now(res: dict) -> float | None:
    """The published number of a bench result's row: its task file's as it is now when that file describes the
    same row (a corrected reference applies to earlier results, as on the results page), else the recorded one.

    Args:
        res: A ``metalearn bench`` result (its ``task``, ``dataset``, ``learner``, ``ways``, ``shots`` and
            ``reference``).
    """
    recorded = (res.get("reference") or {}).get("accuracy") if isinstance(res.get("reference"), dict) \
        else res.get("reference")
    task = res.get("task")
    if not task:
        return recorded
    from metalearn.config import load_config
    for path in (Path(task), ZOO_DIR.parents[1] / task):
        if path.is_file():
            try:
                cfg = load_config(path)
            except Exception:  # noqa: BLE001 - an unreadable or other-kind file: keep the recorded number
                return recorded
            same = (cfg.dataset, cfg.learner, cfg.eval.ways, cfg.eval.shots) == (
                res.get("dataset"), res.get("learner"), res.get("ways"), res.get("shots"))
            return cfg.reference.accuracy if same and cfg.reference.accuracy is not None else recorded
    return recorded


def add_row(result_json: str | os.PathLike, *, zoo_dir: str | os.PathLike = ZOO_DIR) -> dict:
    """Record that a zoo model also reproduces another row: a ``metalearn bench --model-from`` result of it.

    The result must come from the very run the entry's weights were taken from (its run directory is named
    ``TASK-CONFIGHASH-COMMIT``: the entry's config hash and commit) and must reproduce its published number
    ([`published_now`][metalearn.zoo.published_now]).
    ``metalearn.pretrained(row name)`` then loads the entry's weights; nothing new is written but the manifest.

    Args:
        result_json: A ``metalearn bench`` result file whose model came from a zoo entry's run.
        zoo_dir: The zoo folder (default: the one shipped in the package).

    Returns:
        The row's record, as stored in the entry's ``rows``.

    Raises:
        ValueError: The result did not reproduce its row, or no zoo entry was taken from its model's run.
    """
    from metalearn.data.cache import atomic_write

    res = json.loads(Path(result_json).read_text())
    published = published_now(res)
    if not reproduces(res["accuracy"], res["ci95"], published):
        raise ValueError(f"{result_json}: {res['accuracy']:.2f} ± {res['ci95']:.2f} does not reproduce the published "
                         f"{published}; only reproduced rows go into the zoo")
    run = Path(str((res.get("model_from") or {}).get("run_dir") or res.get("run_dir") or "")).name
    models = manifest(zoo_dir)
    owner = next((e for e in models.values()
                  if e.get("commit") and run.endswith(f"-{e['config_hash']}-{e['commit'][:8]}")), None)
    if owner is None:
        raise ValueError(f"{result_json}: its model's run {run!r} is not the run of any zoo model (entries: "
                         f"{', '.join(sorted(models)) or 'none'}); add the model first with add_model")
    row = {"name": res["name"], "accuracy": res["accuracy"], "ci95": res["ci95"], "episodes": res["episodes"],
           "ways": res["ways"], "shots": res["shots"], "queries": res.get("queries", 15),
           "split": res.get("split", "test"), "seed": res.get("eval_seed"), "published": published,
           "result_file": Path(result_json).name}
    if row["name"] == owner["name"]:
        raise ValueError(f"{result_json}: {row['name']!r} is the entry's own row; re-add the model with add_model")
    owner["rows"] = sorted([r for r in owner.get("rows", []) if r["name"] != row["name"]] + [row],
                           key=lambda r: r["name"])
    with atomic_write(Path(zoo_dir) / "manifest.json", mode="w") as f:
        json.dump({"schema": 1, "models": [models[k] for k in sorted(models)]}, f, indent=1)
    return row
