"""`scrapvision evaluate` and `scrapvision models ...`: cards, comparison, promotion.

Everything here runs on onnxruntime (no torch), so QA staff and plants can evaluate and
promote models without the training extra. Heavy modules are imported inside commands to
keep `--help` fast.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from scrapvision.registry import ModelRegistry, RegistryError, RegistryFileError

if TYPE_CHECKING:
    from scrapvision.datasets import Sample

console = Console()
models_app = typer.Typer(help="List, compare, promote and roll back model versions.",
                         no_args_is_help=True)

ModelsDir = Annotated[Path, typer.Option("--models-dir", help="Model registry folder.")]
DataRoots = Annotated[list[Path], typer.Option("--data", help="ImageFolder root (repeatable).")]
SplitCsv = Annotated[Path | None, typer.Option("--split-csv",
                                               help="file,label,split[,group] rows to use.")]
TargetPurity = Annotated[float, typer.Option("--target-purity", min=0.5, max=1.0,
                                             help="Bin purity the thresholds must reach.")]


def register(app: typer.Typer) -> None:
    """Add `evaluate` and the `models` group to the main `scrapvision` app."""
    app.command("evaluate")(evaluate)
    app.add_typer(models_app, name="models")


@contextmanager
def _clear_errors(status: int = 1) -> Iterator[None]:
    """Turn the package's bad-input errors into one red line and exit `status`."""
    try:
        yield
    except (ValueError, RegistryError) as exc:  # ValueError: data, decode, model, evaluation
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True)  # paths stay copyable
        raise typer.Exit(status) from exc


def resolve_model(ref: str, models_dir: Path) -> Path:
    """An .onnx path as given, else `name[:version]` in the registry (active version)."""
    path = Path(ref)
    if path.suffix == ".onnx" or path.is_file():
        if not path.is_file():
            raise ValueError(f"model file {path} does not exist")
        return path
    name, _, version = ref.partition(":")
    return ModelRegistry(models_dir).model_path(name, version or None)


def _samples(data: list[Path], split_csv: Path | None) -> list[Sample]:
    from scrapvision.datasets import load_samples

    return load_samples(data, split_csv)


def evaluate(
    model: Annotated[str, typer.Argument(help="Path to an .onnx file or name[:version].")],
    data: DataRoots,
    split_csv: SplitCsv = None,
    target_purity: TargetPurity = 0.98,
    out: Annotated[Path | None, typer.Option(
        "--out", help="Write the card here instead of next to the model (the model's "
                      "stored temperature is then left unchanged).")] = None,
    note: Annotated[str | None, typer.Option(
        "--note", help="What the data is and is not (default: demonstration data).")] = None,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Evaluate a model on val+test rows and write its card (JSON, Markdown, plots)."""
    from scrapvision.evaluation import evaluate_model

    with _clear_errors():
        path = resolve_model(model, models_dir)
        card = evaluate_model(path, _samples(data, split_csv), target_purity=target_purity,
                              out_dir=out, note=note, data_roots=data,
                              progress=console.is_terminal)
    metrics = card["metrics"]
    console.print(f"{card['model']['name']}:{card['model']['version']}: top-1 "
                  f"{metrics['top1']:.2%}, macro F1 {metrics['macro_f1']:.3f}, ECE "
                  f"{metrics['ece_before']:.4f} -> {metrics['ece_after']:.4f} at T="
                  f"{metrics['temperature']:.4g}")
    console.print(f"card written to {out or path.parent}")


@models_app.command("list")
def list_models(models_dir: ModelsDir = Path("models")) -> None:
    """Every model version, which one is active, and the headline numbers of its card."""
    from scrapvision.cards import headline

    registry = ModelRegistry(models_dir)
    table = Table("name", "version", "active", "top-1", "macro F1", "ECE", "ejectable classes",
                  title=f"models in {models_dir}")
    problems: list[str] = []  # damaged registry files: listed after the table, the rest still shown
    for name in registry.names():
        active = _or_problem(registry.active, name, problems=problems)
        for version in registry.versions(name):
            card = _or_problem(registry.card, name, version, problems=problems)
            numbers = ["-"] * 4
            if card:
                h = headline(card)
                numbers = [f"{h['top1']:.2%}", f"{h['macro_f1']:.3f}", f"{h['ece_after']:.4f}",
                           f"{h['ejectable']}/{h['classes']}"]
            table.add_row(name, version, "*" if version == active else "", *numbers)
    if not table.rows:
        console.print(f"no models in {models_dir}")
        return
    console.print(table)
    for problem in problems:
        console.print(f"[red]error:[/red] {problem}", soft_wrap=True)
    if problems:
        raise typer.Exit(1)


def _or_problem(read: Callable[..., Any], *args: str, problems: list[str]) -> Any:
    """`read(*args)`, or None with the damaged file's message added to `problems`."""
    try:
        return read(*args)
    except RegistryFileError as exc:
        problems.append(str(exc))
        return None


@models_app.command("compare")
def compare(
    model_a: Annotated[str, typer.Argument(help="First model: .onnx path or name[:version].")],
    model_b: Annotated[str, typer.Argument(help="Second model: .onnx path or name[:version].")],
    data: DataRoots,
    split_csv: SplitCsv = None,
    target_purity: TargetPurity = 0.98,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Evaluate two models on the same rows and print their cards side by side."""
    from scrapvision.evaluation import compare_evaluations, run_evaluation

    with _clear_errors():
        paths = [resolve_model(ref, models_dir) for ref in (model_a, model_b)]
        samples = _samples(data, split_csv)
        a, b = (run_evaluation(path, samples, target_purity=target_purity, data_roots=data,
                               progress=console.is_terminal) for path in paths)
    refs = [f"{e.card['model']['name']}:{e.card['model']['version']} ({ref})"
            for e, ref in zip((a, b), (model_a, model_b))]
    console.print(_summary_table(a.card, b.card, refs))
    console.print(_class_table(a.card, b.card, refs))
    console.print(compare_evaluations(a, b, refs)["verdict"])


def _summary_table(card_a: dict, card_b: dict, refs: list[str]) -> Table:
    table = Table("metric", *refs, title=f"test rows: {card_a['metrics']['test_rows']}")
    rows = [("top-1", "top1", "{:.2%}"), ("macro F1", "macro_f1", "{:.3f}"),
            ("ECE before", "ece_before", "{:.4f}"), ("ECE after", "ece_after", "{:.4f}"),
            ("temperature", "temperature", "{:.4g}")]
    for label, key, fmt in rows:
        table.add_row(label, *(fmt.format(c["metrics"][key]) for c in (card_a, card_b)))
    table.add_row(f"classes ejectable at {card_a['target_purity']:.0%}",
                  *(str(sum(t["threshold"] is not None for t in c["thresholds"].values()))
                    for c in (card_a, card_b)))
    return table


def _class_table(card_a: dict, card_b: dict, refs: list[str]) -> Table:
    table = Table("class", *(f"{kind} {side}" for kind in ("F1", "threshold", "test recall")
                             for side in ("A", "B")),
                  title="per class (A = " + refs[0] + ", B = " + refs[1] + ")")
    names = list(dict.fromkeys([*card_a["thresholds"], *card_b["thresholds"]]))
    for name in names:
        f1 = [_fmt(c["metrics"]["per_class"].get(name, {}).get("f1"), "{:.3f}")
              for c in (card_a, card_b)]
        entries = [c["thresholds"].get(name, {}) for c in (card_a, card_b)]
        threshold = [_fmt(e.get("threshold"), "{:.3f}", "never") for e in entries]
        recall = [_fmt(e.get("test_recall"), "{:.1%}") for e in entries]
        table.add_row(name, *f1, *threshold, *recall)
    return table


def _fmt(value: float | None, fmt: str, missing: str = "-") -> str:
    return missing if value is None else fmt.format(value)


@models_app.command("quantize")
def quantize(
    model: Annotated[str, typer.Argument(
        help="name[:version] in the registry (default version: the active one).")],
    data: DataRoots,
    split_csv: SplitCsv = None,
    calibration: Annotated[int, typer.Option(
        "--calibration", min=1, help="Train-split frames to calibrate on.")] = 200,
    max_drop: Annotated[float, typer.Option(
        "--max-drop", help="Largest top-1 drop on the test rows, in points, that --promote "
                           "accepts.")] = 0.5,
    promote: Annotated[bool, typer.Option(
        "--promote", help="Make the int8 version active if its drop is within --max-drop.")
    ] = False,
    target_purity: Annotated[float | None, typer.Option(
        "--target-purity", min=0.5, max=1.0,
        help="Bin purity the thresholds must reach (default: the source card's, else 0.98).")
    ] = None,
    note: Annotated[str | None, typer.Option(
        "--note", help="What the data is and is not (default: the source card's note when "
                       "it was made on the same data).")] = None,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Quantise a version to int8 as a new version, evaluate it, compare, promote if asked."""
    from scrapvision.quantize import float_source, quantize_version

    name, _, version = model.partition(":")
    with _clear_errors(status=2):
        before = ModelRegistry(models_dir).active(name)
        source_version, _ = float_source(models_dir, name, version or None)
        samples = _samples(data, split_csv)
        console.print(f"quantising {name}:{source_version} to int8 with up to {calibration} "
                      "train frames, then evaluating both versions")
        result = quantize_version(models_dir, name, version or None, samples,
                                  calibration=calibration, max_drop=max_drop, promote=promote,
                                  target_purity=target_purity, note=note, data_roots=data,
                                  progress=console.is_terminal)
    q = result.info.quantization
    new, source = f"{name}:{result.version}", f"{name}:{result.source_version}"
    console.print(f"{new} registered: int8 of {source}, {q['calibration_frames']} calibration "
                  f"frames from {q['calibration_split']}; card written to {result.path.parent}")
    refs = [f"{new} (int8)", source]
    console.print(_summary_table(result.int8.card, result.source.card, refs))
    console.print(_class_table(result.int8.card, result.source.card, refs))
    console.print(result.comparison["verdict"])
    top1 = [e.card["metrics"]["top1"] for e in (result.source, result.int8)]
    console.print(f"top-1 on the test rows {top1[0]:.2%} -> {top1[1]:.2%}: drop "
                  f"{result.drop_points:.2f} points (max {max_drop:g})")
    if result.promoted:
        console.print(f"{name}: active version is now {result.version} (was {before})")
    elif not promote:
        console.print(f"{before} stays active; promote with `scrapvision models promote {name} "
                      f"{result.version}`" + ("" if result.within_max_drop
                                              else " (its drop is over --max-drop)"))
    else:
        console.print(f"not promoted: the drop of {result.drop_points:.2f} points is over "
                      f"--max-drop {max_drop:g}; {before} stays active")


@models_app.command("ensemble")
def ensemble(
    name: Annotated[str, typer.Argument(help="Model name.")],
    versions: Annotated[list[str], typer.Argument(
        help="Two or more versions of NAME to join, e.g. v3 v5.")],
    data: DataRoots,
    split_csv: SplitCsv = None,
    promote: Annotated[bool, typer.Option(
        "--promote", help="Make the ensemble active if its val top-1 beats every member's.")
    ] = False,
    target_purity: Annotated[float | None, typer.Option(
        "--target-purity", min=0.5, max=1.0,
        help="Bin purity the thresholds must reach (default: the best member's card's).")
    ] = None,
    note: Annotated[str | None, typer.Option(
        "--note", help="What the data is and is not (default: the best member's card's).")
    ] = None,
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Join versions into one graph averaging their logits, as a new version; evaluate it."""
    from scrapvision.ensemble import ensemble_versions

    with _clear_errors(status=2):
        before = ModelRegistry(models_dir).active(name)
        samples = _samples(data, split_csv)
        console.print(f"joining {name} {' + '.join(versions)}, then evaluating the ensemble "
                      "and its best member")
        result = ensemble_versions(models_dir, name, versions, samples, promote=promote,
                                   target_purity=target_purity, note=note, data_roots=data,
                                   progress=console.is_terminal)
    record = result.info.ensemble
    members = ", ".join(f"{m['version']} {m['val_top1']:.2%}" for m in record["members"])
    new, best = f"{name}:{result.version}", f"{name}:{result.best_member}"
    console.print(f"{new} registered ({record['combine']}); val top-1: members {members}, "
                  f"ensemble {record['val_top1']:.2%}; card written to {result.path.parent}")
    refs = [f"{new} (ensemble)", best]
    console.print(_summary_table(result.ensemble.card, result.best.card, refs))
    console.print(_class_table(result.ensemble.card, result.best.card, refs))
    console.print(result.comparison["verdict"])
    if result.promoted:
        console.print(f"{name}: active version is now {result.version} (was {before})")
    else:
        why = "" if result.beats_members else " (its val top-1 does not beat every member's)"
        console.print(f"{before} stays active{why}; promote with `scrapvision models promote "
                      f"{name} {result.version}`")


@models_app.command("promote")
def promote(
    name: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[str, typer.Argument(help="Version to make active, e.g. v2.")],
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Make VERSION the active version of NAME (the service serves the active one)."""
    registry = ModelRegistry(models_dir)
    with _clear_errors():
        registry.promote(name, version)
    if registry.card(name, version) is None:
        console.print(f"[yellow]warning:[/yellow] {name}:{version} has no card; run "
                      "`scrapvision evaluate` so the service has thresholds for it")
    console.print(f"{name}: active version is now {version}")


@models_app.command("rollback")
def rollback(
    name: Annotated[str, typer.Argument(help="Model name.")],
    models_dir: ModelsDir = Path("models"),
) -> None:
    """Make the previously promoted version of NAME active again."""
    with _clear_errors():
        version = ModelRegistry(models_dir).rollback(name)
    console.print(f"{name}: rolled back, active version is now {version}")
