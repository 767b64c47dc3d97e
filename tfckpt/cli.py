"""The `tfckpt` command line: `tfckpt ls DIR`, `tfckpt verify DIR`."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _ls(args: argparse.Namespace) -> int:
    from tfckpt.run import open_run

    run = open_run(args.directory)
    records, problems = run.checkpoints, run.problems
    best = run.best
    if args.json:
        rows = [
            {
                "name": r.name,
                "step": r.step,
                "epoch": r.epoch,
                "batch": r.batch,
                "metrics": dict(r.metrics),
                "size": r.size,
                "time": r.time,
                "path": r.path,
                "kept": r.kept,
                "best": best is not None and r.name == best.name,
            }
            for r in records
        ]
        rows += [{"name": p.name, "problem": p.reason} for p in problems]
        print(json.dumps(rows, indent=1))
        return 0
    if not records and not problems:
        print(f"{args.directory}: no checkpoints")
        return 0
    monitor = run.monitor[0] if run.monitor else None
    print(
        f"{'name':<12} {'step':>8} {'epoch':>6} {'batch':>6} {'size':>10}  "
        f"{(monitor or ''):<12} {'saved':<19}  kept because"
    )
    for r in records:
        value = r.metrics.get(monitor) if monitor else None
        shown = f"{value:.6g}" if isinstance(value, (int, float)) else ""
        mark = " *" if best is not None and r.name == best.name else ""
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
        print(
            f"{r.name:<12} {r.step:>8} {r.epoch:>6} {r.batch:>6} {r.size:>10}  "
            f"{shown + mark:<12} {saved:<19}  {r.kept or ''}"
        )
    for p in problems:
        print(f"{p.name:<12} DAMAGED: {p.reason}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from tfckpt.run import verify

    results = verify(args.directory)
    for name, problem in results:
        print(f"{name}: {'OK' if problem is None else 'DAMAGED: ' + problem}")
    bad = sum(problem is not None for _, problem in results)
    print(f"{len(results) - bad} intact, {bad} damaged")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tfckpt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("ls", help="list the checkpoints of a run directory")
    ls.add_argument("directory")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_ls)
    ver = sub.add_parser("verify", help="check sizes and checksums of every checkpoint")
    ver.add_argument("directory")
    ver.set_defaults(func=_verify)
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except FileNotFoundError as e:
        print(f"tfckpt: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
