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

    With a name it returns the learner, in eval mode. Without, it returns one dict per model, sorted by name,
    with ``name``, ``dataset``, ``learner``, ``ways``, ``shots``, ``accuracy``, ``ci95``, ``published``,
    ``task`` and ``commit`` (an empty list when the zoo ships no model). The weights file's sha256 is checked
    against the manifest before loading (``weights_only`` loading).

    Args:
        name: A model's name (the task name of the row it reproduces, e.g. ``"protonet_omniglot_5w1s"``); None
            lists the models.
        device: Where the learner goes.
        zoo_dir: The zoo folder (default: the one shipped in the package).

    Raises:
        ValueError: No model of that name (the message lists the available ones), or weights whose sha256
            differs from the manifest's.
        FileNotFoundError: The manifest names a weights file that is missing.
    """
    entries = manifest(zoo_dir)
    if name is None:
        return [{"name": n, "dataset": e["config"]["dataset"], "learner": e["config"]["learner"],
                 "ways": e["result"]["ways"], "shots": e["result"]["shots"],
                 "accuracy": e["result"]["accuracy"], "ci95": e["result"]["ci95"],
                 "published": e["result"].get("published"), "task": e.get("task"), "commit": e.get("commit")}
                for n, e in sorted(entries.items())]
    if name not in entries:
        have = ", ".join(sorted(entries)) or "none yet"
        raise ValueError(f"pretrained: no model {name!r} in the zoo; available: {have}")
    e = entries[name]
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
    published = (res.get("reference") or {}).get("accuracy") if isinstance(res.get("reference"), dict) \
        else res.get("reference")
    if not reproduces(ev["accuracy"], ev["ci95"], published):
        raise ValueError(f"{result_json}: {ev['accuracy']:.2f} ± {ev['ci95']:.2f} does not reproduce the published "
                         f"{published}; only reproduced rows go into the zoo")
    run_dir = Path(run_dir or res["run_dir"])
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
             "commit": (res.get("git") or {}).get("commit"), "step": ck.get("step"),
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
