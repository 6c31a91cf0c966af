"""Model cards: the evaluation of one model version as JSON (for tools), Markdown and plots.

`card.json` is read by the service policy (`thresholds`) and by `scrapvision models`;
`card.md` is for people deciding whether to promote a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from scrapvision.registry import CARD_FILE, write_json_atomic

MARKDOWN_FILE = "card.md"
CONFUSION_PLOT = "confusion_matrix.png"
RELIABILITY_PLOT = "reliability.png"


def write_card(card: dict[str, Any], out_dir: Path) -> None:
    """Write plots, `card.json` and `card.md` into `out_dir` (created if needed)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    card["plots"] = {"confusion_matrix": CONFUSION_PLOT, "reliability": RELIABILITY_PLOT}
    plot_confusion_matrix(card, out_dir / CONFUSION_PLOT)
    plot_reliability(card, out_dir / RELIABILITY_PLOT)
    write_json_atomic(out_dir / CARD_FILE, card)
    (out_dir / MARKDOWN_FILE).write_text(render_markdown(card))


def headline(card: dict[str, Any]) -> dict[str, Any]:
    """The few numbers that summarise a card in one table row."""
    metrics = card["metrics"]
    thresholds = card["thresholds"].values()
    return {"top1": metrics["top1"], "macro_f1": metrics["macro_f1"],
            "ece_after": metrics["ece_after"],
            "ejectable": sum(t["threshold"] is not None for t in thresholds),
            "classes": len(card["thresholds"])}


def plot_confusion_matrix(card: dict[str, Any], path: Path) -> None:
    names = card["confusion_matrix"]["labels"]
    matrix = np.array(card["confusion_matrix"]["matrix"])
    size = max(4.0, 0.6 * len(names) + 2)
    fig = Figure(figsize=(size, size), layout="constrained")
    ax = fig.add_subplot()
    row_share = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    ax.imshow(row_share, cmap="Blues", vmin=0, vmax=1)
    for (i, j), count in np.ndenumerate(matrix):
        if count:
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if row_share[i, j] > 0.5 else "black", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{_ref(card)}: test confusion (top-1 {card['metrics']['top1']:.1%})")
    fig.savefig(path, dpi=120)


def plot_reliability(card: dict[str, Any], path: Path) -> None:
    metrics = card["metrics"]
    fig = Figure(figsize=(5, 5), layout="constrained")
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    labels = {"before": f"T=1, ECE {metrics['ece_before']:.3f}",
              "after": f"T={metrics['temperature']:.3g}, ECE {metrics['ece_after']:.3f}"}
    for key, label in labels.items():
        bins = card["reliability"][key]
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins],
                marker="o", label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("top-1 confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{_ref(card)}: reliability on test")
    ax.legend(loc="upper left")
    fig.savefig(path, dpi=120)


def _ref(card: dict[str, Any]) -> str:
    return f"{card['model']['name']}:{card['model']['version']}"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _provenance(data: dict[str, Any]) -> str:
    """How the evaluation data relates to the data the model was trained on."""
    if not data["training_fingerprint"]:
        return "the model does not record its training data"
    if data["fingerprint"] == data["training_fingerprint"]:
        return "the model's own training data and split: test rows were held out"
    return f"not the model's training data, which was `{data['training_fingerprint']}`"


def _quantization(q: dict[str, Any] | None) -> list[str]:
    """The card line of an int8 model (`ModelInfo.quantization`); none for a float model."""
    if not q:
        return []
    return [f"- Weights: **int8** ({q['type']}), quantised from version {q['source_version']} "
            f"with {q['calibration_frames']} calibration frames of the "
            f"{q['calibration_split']} split"]


def _ensemble(e: dict[str, Any] | None) -> list[str]:
    """The card line of an ensemble (`ModelInfo.ensemble`); none for a single model."""
    if not e:
        return []
    members = ", ".join(f"{m['version']} (val {m['val_top1']:.2%})" for m in e["members"])
    return [f"- Ensemble ({e['combine']}) of {members}: val {e['val_top1']:.2%}"]


def render_markdown(card: dict[str, Any]) -> str:
    """Human-readable card; every figure in it comes from `card` itself."""
    model, data, metrics = card["model"], card["data"], card["metrics"]
    counts = data["class_counts"]
    splits = list(counts)
    lines = [
        f"# Model card: {_ref(card)}",
        "",
        f"- Architecture: {model['architecture'] or 'unknown'}; input "
        f"{model['input_size'][0]}x{model['input_size'][1]} {model['colour_order']}",
        f"- Classes ({len(model['class_names'])}): {', '.join(model['class_names'])}",
        *_quantization(model.get("quantization")),
        *_ensemble(model.get("ensemble")),
        f"- Evaluated: {card['evaluated']} with onnxruntime on the serving decode path",
        "",
        "## Data",
        "",
        f"- Roots: {', '.join(data['roots']) or 'not recorded'}",
        f"- Fingerprint: `{data['fingerprint']}` ({_provenance(data)})",
        "",
        "| class | " + " | ".join(splits) + " |",
        "|---|" + "---|" * len(splits),
    ]
    for name in sorted({c for split in counts.values() for c in split}):
        lines.append(f"| {name} | " + " | ".join(str(counts[s].get(name, 0)) for s in splits)
                     + " |")
    lines += [
        "",
        "### What the data is and is not",
        "",
        data["note"],
        "",
        "## Results on test",
        "",
        f"- Top-1 accuracy: **{metrics['top1']:.2%}** on {metrics['test_rows']} rows; "
        f"macro F1 {metrics['macro_f1']:.3f}",
        f"- Calibration: temperature {metrics['temperature']:.4g} fitted on val "
        f"(val NLL {metrics['val_nll_before']:.4f} -> {metrics['val_nll_after']:.4f}); "
        f"test ECE {metrics['ece_before']:.4f} -> {metrics['ece_after']:.4f}; "
        + ("stored in the model file" if card.get("temperature_stored")
           else "not stored in the model file (this card is a report)"),
        "",
        "| class | precision | recall | F1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, s in metrics["per_class"].items():
        lines.append(f"| {name} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} "
                     f"| {s['support']} |")
    lines += [
        "",
        f"## Eject thresholds for {card['target_purity']:.0%} purity",
        "",
        "Chosen on val, on calibrated probabilities; an item is ejected as a class only when it "
        "is the top class with at least this probability. `never` means the class does not "
        "reach the target purity: recirculate it instead.",
        "",
        "| class | threshold | val purity | val recall | test purity | test recall |",
        "|---|---|---|---|---|---|",
    ]
    for name, t in card["thresholds"].items():
        shown = "never" if t["threshold"] is None else f"{t['threshold']:.4f}"
        lines.append(f"| {name} | {shown} | {_pct(t['val_purity'])} | {_pct(t['val_recall'])} "
                     f"| {_pct(t['test_purity'])} | {_pct(t['test_recall'])} |")
    lines += ["", "## Plots", ""]
    lines += [f"![{key}]({file})" for key, file in card.get("plots", {}).items()]
    return "\n".join(lines) + "\n"
