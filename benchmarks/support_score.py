"""How a Siamese network or Matching Networks should score a query against K support images of a class,
chosen on validation.

Evaluates one trained run (its ``best.pt``) on the validation split with every rule of the learner's
``SUPPORT_SCORES`` (``metalearn.learners.siamese`` or ``metalearn.learners.matchnet``) over the same episodes,
and writes the accuracies, their paired differences to the first rule (mean ± 95% CI over episodes) and the
command as JSON:

    python benchmarks/support_score.py runs/bench/siamese_omniglot_20w5s-...  \
        --ways 20 --shots 5 --episodes 600 --out results/siamese/support_score_val_20w5s.json
    python benchmarks/support_score.py runs/bench/matchnet_omniglot_20w5s-...  \
        --ways 20 --shots 5 --episodes 600 --out results/matchnet/support_score_val_20w5s.json

The run should be a first-stage run (trained on the train split only), so that the validation characters are
unseen; the rule it picks then goes into the task files. (``benchmarks/siamese_support_score.py`` is the same
script under its first name.)
"""
from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("run", help="a finished Siamese or Matching Networks run directory (config.yaml, best.pt)")
    p.add_argument("--ways", type=int, default=20)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--queries", type=int, default=15)
    p.add_argument("--episodes", type=int, default=600)
    p.add_argument("--split", default="val", choices=["train", "val", "test"])
    p.add_argument("--seed", type=int, default=1234, help="the episodes' seed (the same for every rule)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", required=True, help="the JSON file to write")
    args = p.parse_args(argv)
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import numpy as np

    from metalearn.bench import git_state, machine_info
    from metalearn.builders import build_learner
    from metalearn.cli import _episode_sampler
    from metalearn.config import config_from_dict
    from metalearn.data.cache import atomic_write
    from metalearn.engine import set_threads, tune_allocator
    from metalearn.learners import matchnet, siamese
    from metalearn.train.checkpoint import load_checkpoint
    from metalearn.train.evaluator import evaluate, mean_ci95

    tune_allocator()
    set_threads(args.threads)
    ck = load_checkpoint(Path(args.run) / "best.pt")
    meta = ck["meta"]
    cfg = config_from_dict(meta["config"])
    rules_of = {"siamese": siamese.SUPPORT_SCORES, "matchnet": matchnet.SUPPORT_SCORES}
    if cfg.learner not in rules_of:
        print(f"support_score: error: run: expected a siamese or matchnet run, got learner {cfg.learner!r}",
              file=sys.stderr)
        return 2
    SUPPORT_SCORES = rules_of[cfg.learner]
    learner = build_learner(cfg, tuple(meta["image_shape"]))
    learner.load_state_dict(ck["model"])
    rules = {}
    t0 = time.perf_counter()
    for rule in SUPPORT_SCORES:
        learner.support_score = rule
        sampler = _episode_sampler(cfg, args.split, args.ways, args.shots, args.queries, cfg.eval.batch_size,
                                   args.seed)
        res = evaluate(learner, sampler, args.episodes)
        rules[rule] = res
        print(f"{rule:11s} {res}", flush=True)
    first = SUPPORT_SCORES[0]
    out = {"kind": f"metalearn-{cfg.learner}-support-score", "run": str(args.run), "step": ck.get("step"),
           "split": args.split, "ways": args.ways, "shots": args.shots, "queries": args.queries,
           "episodes": args.episodes, "seed": args.seed, "rules": {}}
    for rule, res in rules.items():
        diff = np.asarray(res.per_episode) - np.asarray(rules[first].per_episode)
        m, c = mean_ci95(diff)
        out["rules"][rule] = {"accuracy": res.accuracy, "ci95": res.ci95, f"minus_{first}": m,
                              f"minus_{first}_ci95": c}
    out.update({"command": shlex.join(["python", f"benchmarks/{Path(sys.argv[0]).name}", *(argv or sys.argv[1:])]),
                "git": git_state(), "machine": machine_info("cpu"), "threads": args.threads,
                "wall_s": time.perf_counter() - t0, "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, mode="w") as f:
        json.dump(out, f, indent=1)
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
