"""Thread count and OpenMP wait policy, measured on a quiet machine and next to one busy neighbour.

The ProtoNet Omniglot 60-way 1-shot training step with the default policy (benchmarks/cpu_throughput.py's
``protonet_train`` worker, one fresh process per measurement) at 1 and 2 threads, with OMP_WAIT_POLICY
ACTIVE (idle threads spin) and PASSIVE (they sleep; metalearn's default next to a busy process), once on the
quiet machine and once while another process keeps one core busy (a pure-Python spin loop). Interleaved,
medians; one JSON in ``--out``.

    python benchmarks/threads_policy.py --out results/speed

``--workloads`` takes other workloads of cpu_throughput.py (one result file each), and ``--policies`` also
takes ``SPIN=N``: OMP_WAIT_POLICY unset and ``GOMP_SPINCOUNT=N`` (libgomp, the OpenMP of PyTorch's Linux
wheels: an idle thread spins N times before it sleeps; ACTIVE spins for ever, PASSIVE not at all):

    python benchmarks/threads_policy.py --workloads protonet_train maml2_vmap \
        --policies ACTIVE PASSIVE SPIN=10000 SPIN=100000 --out results/speed
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
WORKLOAD_NAMES = {"protonet_train": "protonet_train (60-way 1-shot 5-query)",
                  "maml2_vmap": "maml2_vmap (second-order MAML, 8 tasks of 5-way 1-shot 15-query, vmap)",
                  "maml2_loop": "maml2_loop (second-order MAML, 8 tasks of 5-way 1-shot 15-query, per-task loop)"}


def policy_env(policy: str, environ: dict) -> dict:
    """The environment of a worker under ``policy``: ``ACTIVE`` / ``PASSIVE`` (OMP_WAIT_POLICY) or ``SPIN=N``."""
    env = {k: v for k, v in environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy.startswith("SPIN="):
        n = policy.split("=", 1)[1]
        if not n.isdigit():
            raise ValueError(f"--policies: SPIN=N needs a whole number of spins, got {policy!r}")
        env.update({"GOMP_SPINCOUNT": n, "METALEARN_OMP": "default"})
    elif policy in ("ACTIVE", "PASSIVE"):
        env["OMP_WAIT_POLICY"] = policy
    else:
        raise ValueError(f"--policies: expected ACTIVE, PASSIVE or SPIN=N, got {policy!r}")
    return env


def _worker(workload: str, threads: int, policy: str, reps: int, timeout: float) -> dict:
    spec = {"workload": workload, "policy": "default", "threads": threads, "quick": False, "reps": reps}
    env = policy_env(policy, os.environ)
    r = subprocess.run([sys.executable, str(HERE / "cpu_throughput.py"), "--worker", json.dumps(spec)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        return {"error": (r.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--workloads", nargs="+", default=["protonet_train"],
                   help="workloads of benchmarks/cpu_throughput.py (one result file each)")
    p.add_argument("--policies", nargs="+", default=["ACTIVE", "PASSIVE"], help="ACTIVE, PASSIVE or SPIN=N")
    p.add_argument("--out", default="results/speed")
    args = p.parse_args(argv)
    try:
        for pol in args.policies:
            policy_env(pol, {})
    except ValueError as e:
        print(f"threads_policy: error: {e}", file=sys.stderr)
        return 2
    for workload in args.workloads:
        run_workload(workload, args, argv)
    return 0


def run_workload(workload: str, args: argparse.Namespace, argv: list[str] | None) -> None:
    sys.path.insert(0, str(HERE.parent))
    from metalearn.bench import git_state, machine_info
    records = []
    for neighbour in ("quiet", "busy"):
        spin = None
        if neighbour == "busy":
            spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            time.sleep(1.0)
        try:
            for _ in range(args.repeats):
                for threads in (1, 2):
                    for policy in args.policies:
                        rec = _worker(workload, threads, policy, args.reps, args.timeout)
                        rec.update({"neighbour": neighbour, "threads": threads, "wait_policy": policy})
                        records.append(rec)
                        print(f"{workload} {neighbour:5s} {threads}T {policy:12s} "
                              + (rec.get("error") or f"{rec['ms']:.1f} ms"), flush=True)
        finally:
            if spin is not None:
                spin.kill()
                spin.wait()
    rows = []
    for neighbour in ("quiet", "busy"):
        for threads in (1, 2):
            for policy in args.policies:
                ms = [r["ms"] for r in records if "ms" in r and (r["neighbour"], r["threads"], r["wait_policy"])
                      == (neighbour, threads, policy)]
                rows.append({"neighbour": neighbour, "threads": threads, "wait_policy": policy,
                             "ms": statistics.median(ms) if ms else None})
    git = git_state()
    res = {"kind": "metalearn-threads-policy", "schema": 1, "workload": WORKLOAD_NAMES.get(workload, workload),
           "rows": rows, "records": records,
           "command": shlex.join(["python", "benchmarks/threads_policy.py", *(argv or sys.argv[1:])]),
           "git": git, "machine": machine_info("cpu"), "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = "" if workload == "protonet_train" else f"{workload}-"
    path = out / f"threads_policy-{tag}{(git.get('commit') or 'nocommit')[:8]}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=1))
    os.replace(tmp, path)
    for r in rows:
        print(r)
    print(f"-> {path}")


if __name__ == "__main__":
    sys.exit(main())
