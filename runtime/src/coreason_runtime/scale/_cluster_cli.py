"""``coreason cluster up | down | status``: a deployment on this machine, from the shell."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import threading
from pathlib import Path

__all__ = ["add_arguments", "run"]

_CONNECT = """\
Temporal {temporal} · Redis {redis_url} · deployment {deployment!r} · workers {workers}
({threads_per_worker} torch threads each)
From Python (a notebook):
    from coreason_runtime.scale import ClusterClient, cluster_runtime
    rt = cluster_runtime({redis_url!r}, {deployment!r})
    client = ClusterClient(rt, temporal={temporal!r}, redis_url={redis_url!r},
                           deployment={deployment!r})
Stop with Ctrl-C, or `coreason cluster down --dir {workdir}` from another shell."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``cluster`` subcommand's arguments."""
    parser.add_argument("action", choices=["up", "down", "status"])
    parser.add_argument("--dir", default=".coreason-cluster", help="state, homes and logs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--deployment", default="default")
    parser.add_argument("--queue", default="coreason")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per worker (default cores//N)"
    )
    parser.add_argument("--setup", default=None, help="module:function each worker calls")
    parser.add_argument("--temporal-port", type=int, default=7233)
    parser.add_argument("--redis-port", type=int, default=6379)
    parser.add_argument("--redis", default=None, help="status: the deployment's Redis URL")


def run(args: argparse.Namespace) -> int:
    """Dispatch ``up``, ``down`` or ``status``."""
    return {"up": _up, "down": _down, "status": _status}[args.action](args)


def _up(args: argparse.Namespace) -> int:
    from coreason_runtime.scale._cluster import LocalCluster

    cluster = LocalCluster(
        Path(args.dir),
        workers=args.workers,
        deployment=args.deployment,
        task_queue=args.queue,
        setup=args.setup,
        concurrency=args.concurrency,
        threads=args.threads,
        temporal_port=args.temporal_port,
        redis_port=args.redis_port,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with cluster:
        state = cluster.state()
        print(
            _CONNECT.format(workers=", ".join(sorted(cluster.procs)), **state),
            file=sys.stderr,
        )
        with contextlib.suppress(KeyboardInterrupt):
            stop.wait()
    return 0


def _down(args: argparse.Namespace) -> int:
    from coreason_runtime.scale._cluster import LocalCluster

    state = LocalCluster.read_state(Path(args.dir))
    # the supervising `cluster up` stops everything it started, workers first
    os.kill(int(state["supervisor"]), signal.SIGTERM)
    return 0


def _status(args: argparse.Namespace) -> int:
    from coreason_runtime.scale._cluster import LocalCluster
    from coreason_runtime.scale._registry import workers

    url = args.redis or LocalCluster.read_state(Path(args.dir))["redis_url"]
    rows = workers(url, args.deployment)
    print(json.dumps([vars(w) for w in rows], indent=2))
    return 0
