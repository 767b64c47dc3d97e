"""Markdown tables from benchmarks/results.json, for the terminal and README.

    python benchmarks/report.py              # print the tables
    python benchmarks/report.py --docs       # replace the section in docs/performance.md

That section lies between `<!-- benchmark:start -->` and
`<!-- benchmark:end -->`; nothing in it is written by hand.
"""

from __future__ import annotations

import argparse
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- benchmark:start -->", "<!-- benchmark:end -->"


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def _table(header: tuple[str, str], rows: list[tuple[str, str]]) -> list[str]:
    out = [f"| {header[0]} | {header[1]} |", "|---|---:|"]
    out += [f"| {a} | {b} |" for a, b in rows]
    return out + [""]


def _spread(v: dict[str, float], digits: int = 3, unit: str = "") -> str:
    low, mid, high = (f"{v[k]:.{digits}f}{unit}" for k in ("min", "median", "max"))
    return f"{mid} ({low} to {high})"


def fit_table(fit: dict) -> list[str]:
    """What saving every epoch cost `fit`, option by option (benchmarks/compare.py
    `bench_fit`)."""
    lines = [
        f"`fit` saving every epoch ({_mib(fit['size_mb'] * 2**20)} of state, "
        f"{fit['steps per epoch']} steps per epoch, {fit['epochs']} epochs, "
        f"{fit['rounds']} interleaved rounds; median (min to max)). *Blocked per save*: "
        "the time between an epoch's last train step and the next one's first, less "
        "the same gap without checkpointing, over the saves from save "
        f"{fit.get('steady from save', 2)} on (each option keeps 3, so a deletion "
        "follows each of them; Keras's ModelCheckpoint overwrites one file), fit's "
        "final save apart; "
        "*ratio*: steps/s against the fit without checkpointing of the same round. "
        "A fit ends at the last callback's `on_train_end`: `fit`'s return then frees "
        "its tf.data iterator, whose destructor waits for the pipeline's autotuning "
        "thread to wake (up to 19 s on these machines, with or without checkpointing), "
        "which is TensorFlow's and not a save's.",
        "",
        "| option | blocked per save (s) | at the end of fit (s) | steps/s | ratio to no "
        "checkpointing |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, rate in fit["steps/s"].items():
        blocked = fit["blocked per save"].get(name)
        end = fit["blocked at the end of fit"].get(name)
        lines.append(
            f"| {name} | {_spread(blocked) if blocked else '-'} "
            f"| {_spread(end) if end else '-'} | {_spread(rate, 2)} "
            f"| {_spread(fit['ratio to no checkpointing'][name], 3, 'x')} |"
        )
    lines.append("")
    lines.append(
        f"Async was faster than sync in {fit['rounds async faster than sync']} of "
        f"{fit['rounds']} rounds."
    )
    return lines + [""]


def goals(report: dict) -> list[tuple[str, str, bool]]:
    """(goal, measured, met) for each goal of the performance issue."""
    s, ratio, inc = report["seconds"], report["ratios"], report["incremental"]
    out = [
        (
            "durable sync save within 1.1x of raw write+fsync (same bytes, same pattern)",
            f"{ratio['tfckpt sync / raw write+fsync']:.2f}x. The floor is TensorFlow's "
            "writer: its own save + an fsync of its files took "
            f"{ratio['tf save + fsync / raw write+fsync']:.2f}x raw in the same rounds, and "
            f"tfckpt {s['tfckpt sync save (fsync, checksums, commit)'] / s['tf CheckpointManager.save + fsync']:.2f}x "  # noqa: E501
            "of that, commit protocol, hashes and retention included",
            ratio["tfckpt sync / raw write+fsync"] <= 1.1,
        ),
        (
            "`fsync=False` not slower than Keras `.weights.h5`",
            f"{ratio['tfckpt fsync=False / keras ModelCheckpoint']:.2f}x",
            ratio["tfckpt fsync=False / keras ModelCheckpoint"] <= 1.0,
        ),
        (
            "async: `fit` blocked within 1.5x of a host memcpy of the state",
            f"{ratio['tfckpt async blocked / memcpy']:.2f}x "
            f"({s['tfckpt async: fit blocked per save']:.3f} s)",
            ratio["tfckpt async blocked / memcpy"] <= 1.5,
        ),
        (
            "incremental: bytes written per save at most 1.25x the changed bytes",
            f"{ratio['incremental: bytes to disk / changed bytes']:.2f}x reach the disk; "
            f"{inc['incremental']['bytes passed to write() per save'] / inc['incremental']['changed bytes per save']:.2f}x "  # noqa: E501
            "pass through write() (TF writes every tensor; unchanged files are replaced "
            "by links before they are flushed)",
            ratio["incremental: bytes to disk / changed bytes"] <= 1.25,
        ),
        (
            "incremental: N checkpoints use about 2 full states + (N-2) x changed "
            "(the two newest never share a file)",
            f"{ratio['incremental: disk used / (2 full states + (N-2) x changed)']:.2f}x of that",
            ratio["incremental: disk used / (2 full states + (N-2) x changed)"] <= 1.1,
        ),
    ]
    fit = report.get("fit")
    if fit:
        ratio_to_none = fit["ratio to no checkpointing"]
        blocked = {k: v["median"] for k, v in fit["blocked per save"].items()}
        async_, sync = ratio_to_none["tfckpt async"], ratio_to_none["tfckpt sync"]
        floors = "".join(
            f"; {name}: {ratio_to_none[name]['median']:.3f}x"
            for name in ("raw write+fsync in a thread", "raw write+fsync in a writer process")
            if name in ratio_to_none
        )
        out += [
            (
                "async: `fit` throughput at least 0.97x of no checkpointing, and never "
                "below sync saves",
                f"{_spread(async_, 3, 'x')}; sync: {_spread(sync, 3, 'x')}; async faster than "
                f"sync in {fit['rounds async faster than sync']} of {fit['rounds']} rounds"
                f"{floors}",
                async_["median"] >= 0.97 and async_["median"] >= sync["median"],
            ),
            (
                "sync: `fit` blocked per save within 1.5x of a raw write+fsync of the same "
                "bytes and 1.1x of TF's own save + fsync, each saving in the same kind of fit",
                f"{blocked['tfckpt sync']:.3f} s: {fit['ratios']['sync blocked / raw write+fsync']:.2f}x "  # noqa: E501
                f"raw ({blocked['raw write+fsync']:.3f} s), "
                f"{fit['ratios']['sync blocked / tf save+fsync']:.2f}x TF "
                f"({blocked['tf save + fsync']:.3f} s)",
                fit["ratios"]["sync blocked / raw write+fsync"] <= 1.5
                and fit["ratios"]["sync blocked / tf save+fsync"] <= 1.1,
            ),
        ]
    scale = report.get("scale")
    if scale:
        ratios = [p["ratios"]["save / raw write+fsync"] for p in scale]
        to_tf = [p["ratios"]["save / tf save+fsync"] for p in scale]
        out.append(
            (
                "scale: save / raw write ratio flat from 8 MB to 2 GB and with 2,000 variables",
                f"{min(ratios):.2f}x to {max(ratios):.2f}x of raw: fixed costs per save "
                f"(TensorFlow's own save + fsync takes {scale[0]['seconds']['tf save + fsync']:.3f}"
                f" s at {scale[0]['label']}, raw {scale[0]['seconds']['raw write+fsync']:.3f} s) "
                "and TensorFlow's "
                "per-variable cost (2,000 variables) dominate small states; against TF's "
                f"own save + fsync: {min(to_tf):.2f}x to {max(to_tf):.2f}x",
                max(ratios) / min(ratios) <= 1.5,
            )
        )
        restore_to_tf = [p["ratios"]["restore / tf restore"] for p in scale]
        worst = max(
            scale,
            key=lambda p: max(
                p["ratios"]["save / tf save+fsync"], p["ratios"]["restore / tf restore"]
            ),
        )
        full_to_tf = [
            p["ratios"]["save, incremental=False / tf save+fsync"]
            for p in scale
            if "save, incremental=False / tf save+fsync" in p["ratios"]
        ]
        full = (
            f" (`incremental=False`, which writes TF's two files: save {min(full_to_tf):.2f}x "
            f"to {max(full_to_tf):.2f}x)"
            if full_to_tf
            else ""
        )
        out.append(
            (
                "scale: tfckpt's save and restore within 1.1x of TF's own at every point "
                "(many-variable points included)",
                f"save {min(to_tf):.2f}x to {max(to_tf):.2f}x{full}, restore "
                f"{min(restore_to_tf):.2f}x to {max(restore_to_tf):.2f}x of TF's; "
                f"worst at {worst['label']}",
                max(to_tf) <= 1.1 and max(restore_to_tf) <= 1.1,
            )
        )
    return out


def render(report: dict) -> str:
    s = report["seconds"]
    lines = [
        f"{_mib(report['bytes'])} of weights + Adam state, median of {report['repeats']}; "
        f"{report['machine']}.",
        "",
    ]
    lines += _table(("operation", "seconds"), [(k, f"{v:.3f}") for k, v in s.items()])
    if "fit" in report:
        lines += fit_table(report["fit"])
    inc = report["incremental"]
    variants = [v for v in ("full", "incremental", "incremental, no read-back") if v in inc]
    lines += [
        f"Fine-tuning with a frozen backbone ({_mib(inc['state bytes'])} of state, "
        f"{inc['saves']} saves, one train step between them; the variants interleaved "
        "save by save). The read-back is incremental sharing's check that the file "
        "linked to still holds the bytes saved now:",
        "",
        "| per save after the second | " + " | ".join(variants) + " |",
        "|---|" + "---:|" * len(variants),
    ]
    for key in inc["full"]:
        shown = (lambda v: f"{v:.3f}") if key.startswith("seconds") else _mib
        lines.append(f"| {key} | " + " | ".join(shown(inc[v][key]) for v in variants) + " |")
    lines.append("")
    if report.get("scale"):
        lines += [
            "Scale curve (`benchmarks/scale.png`):",
            "",
            "| state | variables | raw write+fsync | TF save+fsync | tfckpt save | ratio to raw "
            "| to TF | incremental=False | to TF | async blocked | raw read | TF restore "
            "| tfckpt restore | to raw | to TF |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for p in report["scale"]:
            t, q = p["seconds"], p["ratios"]
            full = t.get("tfckpt sync save, incremental=False")
            full_cells = (
                f"| {full:.3f} | {q['save, incremental=False / tf save+fsync']:.2f}x "
                if full is not None
                else "| | "
            )
            lines.append(
                f"| {p['label']} ({_mib(p['bytes'])}) | {p['variables']} "
                f"| {t['raw write+fsync']:.3f} | {t['tf save + fsync']:.3f} "
                f"| {t['tfckpt sync save']:.3f} | {q['save / raw write+fsync']:.2f}x "
                f"| {q['save / tf save+fsync']:.2f}x {full_cells}| {t['tfckpt async blocked']:.4f} "
                f"| {t['raw read']:.3f} | {t['tf restore']:.3f} | {t['tfckpt restore']:.3f} "
                f"| {q['restore / raw read']:.2f}x | {q['restore / tf restore']:.2f}x |"
            )
        lines.append("")
    lines += ["| goal | measured | met? |", "|---|---|---|"]
    lines += [f"| {g} | {m} | {'yes' if ok else '**no**'} |" for g, m, ok in goals(report)]
    lines.append("")
    lines += [f"Note: {n}" for n in report.get("notes", [])]
    return "\n".join(lines).rstrip() + "\n"


def update_page(page: str, text: str) -> None:
    with open(page) as f:
        content = f.read()
    if START not in content or END not in content:
        raise SystemExit(f"{page} has no {START} ... {END} section")
    head, rest = content.split(START, 1)
    _, tail = rest.split(END, 1)
    with open(page, "w") as f:
        f.write(f"{head}{START}\n{text}{END}{tail}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", default=os.path.join(HERE, "results.json"))
    p.add_argument("--docs", nargs="?", const=os.path.join(HERE, "..", "docs", "performance.md"))
    args = p.parse_args()
    with open(args.json) as f:
        text = render(json.load(f))
    if args.docs:
        update_page(args.docs, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
