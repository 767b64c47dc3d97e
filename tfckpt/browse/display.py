"""How runs are shown: sizes, the HTML table of checkpoints (notebooks) and
the plot of a metric over a run. Shared by `Run`, notebooks and the CLI."""

from __future__ import annotations

import html
import os
import time
from collections.abc import Sequence
from typing import Any

from tfckpt.errors import NoIntactCheckpointError
from tfckpt.monitor import metric_value, rank
from tfckpt.store.layout import CheckpointRecord, Problem


def human_size(n: int) -> str:
    """`n` bytes as people read sizes: `900 B`, `127 KiB`, `12.4 MiB`."""
    size, units = float(n), ("B", "KiB", "MiB", "GiB", "TiB")
    i = 0
    while size >= 1024 and i < len(units) - 1:
        size /= 1024
        i += 1
    if i == 0:
        return f"{n} B"
    return f"{size:.0f} {units[i]}" if size >= 100 else f"{size:.1f} {units[i]}"


def caption(
    directory: str,
    records: Sequence[CheckpointRecord],
    monitor: tuple[str, str] | None,
    problems: Sequence[Problem],
) -> str:
    """One line on a run: how many checkpoints, the newest, the best with its
    value, damage. The caption of the notebook table and of `repr(Run)`."""
    n = len(records)
    parts = [f"{directory}: {n} checkpoint{'s' * (n != 1)}"]
    if records:
        r = records[-1]
        parts.append(f"newest {r.name} (step {r.step}, epoch {r.epoch})")
    ranked = rank(records, *monitor) if monitor else []
    if ranked:
        name, mode = monitor
        best = ranked[0]
        value = format_value(best.metrics.get(name))
        parts.append(f"best {best.name} ({name}={value}, {mode})")
    if problems:
        parts.append(f"{len(problems)} damaged")
    text = ", ".join(parts)
    parent = records[-1].manifest.get("parent") if records else None
    if parent:
        text += f"; forked from {parent['directory']} {parent['name']}"
    return text


def table_text(
    records: Sequence[CheckpointRecord],
    monitor: tuple[str, str] | None,
    problems: Sequence[Problem],
    shared: Sequence[int] | None = None,
) -> list[str]:
    """The lines of `tfckpt ls` (a header, a row per checkpoint, the best one
    marked `*`, then the damaged ones); `shared` adds the bytes each one shares."""
    name = monitor[0] if monitor else None
    ranked = rank(records, *monitor) if monitor else []
    best = ranked[0].name if ranked else None
    shared_header = f" {'shared':>9}" if shared is not None else ""
    lines = [
        f"{'name':<12} {'step':>8} {'epoch':>6} {'batch':>6} {'size':>9}{shared_header}  "
        f"{(name or ''):<12} {'saved':<19}  kept because"
    ]
    for i, r in enumerate(records):
        value = format_value(r.metrics.get(name)) if name else ""
        mark = " *" if r.name == best else ""
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
        cell = f" {human_size(shared[i]):>9}" if shared is not None else ""
        lines.append(
            f"{r.name:<12} {r.step:>8} {r.epoch:>6} {r.batch:>6} {human_size(r.size):>9}{cell}  "
            f"{value + mark:<12} {saved:<19}  {r.kept or ''}"
        )
    lines += [f"{p.name:<12} DAMAGED: {p.reason}" for p in problems]
    return lines


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def table_html(
    records: Sequence[CheckpointRecord],
    monitor: tuple[str, str] | None,
    problems: Sequence[Problem],
    caption: str | None,
) -> str:
    """The rows of `tfckpt ls` as an HTML table (every text escaped)."""
    name = monitor[0] if monitor else None
    ranked = rank(records, *monitor) if monitor else []
    best = ranked[0].name if ranked else None
    latest = records[-1].name if records else None
    others = sorted({k for r in records for k in r.metrics} - {name})
    columns = ["name", "step", "epoch", "batch", *([name] if name else []), *others]
    columns += ["size", "saved", "kept because", ""]
    esc = html.escape
    out = ['<table class="tfckpt">']
    if caption:
        out.append(f"<caption>{esc(caption)}</caption>")
    out.append("<thead><tr>" + "".join(f"<th>{esc(c)}</th>" for c in columns) + "</tr></thead>")
    out.append("<tbody>")
    for r in records:
        marks = [m for m, hit in (("best", r.name == best), ("latest", r.name == latest)) if hit]
        cells = [r.name, r.step, r.epoch, r.batch]
        cells += [format_value(r.metrics.get(k)) for k in ([name] if name else []) + others]
        saved = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.time))
        cells += [human_size(r.size), saved, r.kept or "", ", ".join(marks)]
        style = ' style="font-weight:bold"' if r.name == best else ""
        out.append(f"<tr{style}>" + "".join(f"<td>{esc(str(c))}</td>" for c in cells) + "</tr>")
    for p in problems:
        out.append(
            f"<tr><td>{esc(p.name)}</td>"
            f'<td colspan="{len(columns) - 1}">DAMAGED: {esc(p.reason)}</td></tr>'
        )
    if not records and not problems:
        out.append(f'<tr><td colspan="{len(columns)}">no checkpoints</td></tr>')
    out.append("</tbody></table>")
    return "\n".join(out)


def plot_run(run: Any, metric: str, *, ax: Any = None, label: str | None = None) -> Any:
    """`Run.plot` (see there)."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.ticker import MaxNLocator
    except ImportError as e:
        raise ImportError(
            'Run.plot needs matplotlib, which is not installed: pip install "tfckpt[plot]"'
        ) from e
    history = run.history
    points = [(e, v) for e, v in zip(history["epoch"], history.get(metric, [])) if v is not None]
    if not points and not run.checkpoints and run.problems:
        raise NoIntactCheckpointError(
            f"Run {run.directory!r} has no intact checkpoint to read its history from "
            f"(damaged: {', '.join(p.name for p in run.problems)}); `tfckpt verify` says why."
        )
    if not points:
        logged = sorted(k for k, vs in history.items() if k != "epoch" and any(vs))
        raise ValueError(
            f"No epoch of run {run.directory!r} logged {metric!r}. "
            f"Logged metrics: {', '.join(logged) or 'none'}."
        )
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    label = label or os.path.basename(os.path.normpath(run.directory))
    (line,) = ax.plot(*zip(*points), label=label)
    color = line.get_color()
    records = run.checkpoints
    marked = [
        (r.epoch, v) for r in records if r.batch == 0 and (v := metric_value(r, metric)) is not None
    ]
    if marked:
        ax.scatter(
            *zip(*marked),
            facecolors="none",
            edgecolors=color,
            zorder=3,
            label=f"{label}: retained checkpoints",
        )
    best = rank(records, *records.monitor)[:1] if records.monitor else []
    value = metric_value(best[0], metric) if best else None
    if best and best[0].batch == 0 and value is not None:
        ax.scatter(
            [best[0].epoch],
            [value],
            marker="*",
            s=200,
            color=color,
            zorder=4,
            label=f"{label}: best by {records.monitor[0]}",
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend()
    return ax


def save_line(record: CheckpointRecord, monitor: str | None, best: dict | None) -> str:
    """The callback's line for a committed checkpoint (`best`: the manager's
    `best_value`)."""
    value = record.metrics.get(monitor) if monitor else None
    shown = f", {monitor}={value:.6g}" if isinstance(value, (int, float)) else ""
    mark = " (new best)" if best and best["step"] == record.step and shown else ""
    where = f"epoch {record.epoch}" + (f" batch {record.batch}" if record.batch else "")
    again = (
        "; replaces the epoch's first save: later callbacks changed the state"
        if record.manifest.get("supersedes")
        else ""
    )
    return f"saved {record.name} ({where}, step {record.step}{shown}){mark}{again}"
