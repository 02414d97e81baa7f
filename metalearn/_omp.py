"""The OpenMP wait policy metalearn picks before torch loads (no torch import here: OpenMP reads its
environment once, when torch loads, so ``import metalearn`` must decide first).

Measured with ``benchmarks/threads_policy.py`` at two threads (results/speed/threads_policy-*.json): on a quiet
machine, idle threads that sleep at once (``OMP_WAIT_POLICY=PASSIVE``) cost 5-8% of a ProtoNet step on an
AVX-512-BF16 EPYC and 12% on an AMX Xeon, where second-order MAML under vmap lost 1.25x and the per-task loop 2x;
spinning a little before sleeping (libgomp's ``GOMP_SPINCOUNT=30000``) matched spinning for ever (ACTIVE) there.
Next to a busy process, spinning threads compete with it: plain two threads were 4-5x slower than one on the
EPYC, and with 30000 spins second-order MAML took 1.8x as long as with PASSIVE on the Xeon. So the choice
depends on whether the machine is shared *now*: the number of runnable tasks in ``/proc/loadavg`` (an
instantaneous count, unlike the load averages, which lag a minute behind) says so.
"""
from __future__ import annotations

import os
import time

#: libgomp spins this many times before an idle thread sleeps, on a quiet machine
QUIET_SPINCOUNT = 30000


def runnable_others(samples: int = 5, gap_s: float = 0.002, path: str = "/proc/loadavg") -> int | None:
    """How many other tasks were runnable in every one of ``samples`` reads of ``/proc/loadavg`` (its 4th field,
    ``running/total``, counts the reader too); None where the file does not exist (not Linux).

    Args:
        samples: Reads of the file; a task counts only if it was runnable in all of them.
        gap_s: Seconds between reads.
        path: The file to read.
    """
    fewest = None
    for i in range(samples):
        try:
            with open(path, encoding="ascii") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, ValueError, IndexError):
            return None
        fewest = running - 1 if fewest is None else min(fewest, running - 1)
        if i + 1 < samples:
            time.sleep(gap_s)
    return max(0, fewest) if fewest is not None else None


def omp_env_defaults(environ: dict | None = None, others: int | None = -1) -> dict:
    """Set the OpenMP wait policy metalearn wants, unless the user set one; returns what it set.

    A quiet machine (no other runnable task right now): ``GOMP_SPINCOUNT=30000``, idle threads spin briefly
    and then sleep. A shared one, or where that cannot be told (not Linux): ``OMP_WAIT_POLICY=PASSIVE``, they
    sleep at once. Left alone when ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` is set, or with
    ``METALEARN_OMP=default``. It only takes effect before torch is loaded (``import metalearn`` calls it).

    Args:
        environ: The environment to update (default ``os.environ``).
        others: Other runnable tasks (-1: count them with ``runnable_others``).
    """
    env = os.environ if environ is None else environ
    if env.get("METALEARN_OMP", "").lower() in ("default", "0", "off"):
        return {}
    if "OMP_WAIT_POLICY" in env or "GOMP_SPINCOUNT" in env:
        return {}
    if others == -1:
        others = runnable_others()
    done = {"GOMP_SPINCOUNT": str(QUIET_SPINCOUNT)} if others == 0 else {"OMP_WAIT_POLICY": "PASSIVE"}
    env.update(done)
    return done
