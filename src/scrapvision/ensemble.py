"""Ensembles of registered versions of one model, shipped as one ONNX graph.

`scrapvision models ensemble NAME VA VB [...]` joins the members' graphs on their shared
uint8 input and averages their logits: each member keeps its own normalisation (and flip
TTA) inside its part of the graph, so the service decodes once and runs one session. The
result is registered as the next version, with the first member's metadata plus
`ModelInfo.ensemble` (members, how they are combined, val top-1 of each), evaluated like
`scrapvision evaluate` (card next to it, temperature fitted on its own val logits) and
compared with the best member on the same test rows. Which to serve is decided on val, the
rows used for choosing: `--promote` makes the ensemble active only when its val top-1
beats every member's.

Members must agree on class names (in order), input size and colour order, because one
decoded frame feeds them all. An ensemble costs the sum of its members per frame.

Needs onnxruntime, onnx and numpy only: never torch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from scrapvision.datasets import Sample
from scrapvision.engine import Engine
from scrapvision.evaluation import (
    DEFAULT_TARGET_PURITY,
    Evaluation,
    compare_evaluations,
    predict_split,
    run_evaluation,
    write_evaluation,
)
from scrapvision.modelmeta import OUTPUT_NAME, ModelInfo
from scrapvision.registry import ModelRegistry

COMBINE = "mean of logits"
_SHARED = ("class_names", "input_size", "colour_order")  # what one decode must serve


class EnsembleError(ValueError):
    """The versions cannot be ensembled (fewer than two, or they disagree on their input)."""


def _check_members(infos: Sequence[ModelInfo]) -> None:
    if len(infos) < 2:
        raise EnsembleError("an ensemble needs at least two versions")
    first = infos[0]
    for info in infos[1:]:
        for key in _SHARED:
            if getattr(info, key) != getattr(first, key):
                raise EnsembleError(
                    f"{info.ref} and {first.ref} differ in {key} ({getattr(info, key)} vs "
                    f"{getattr(first, key)}): one decoded frame must feed every member")


def join_graphs(paths: Sequence[Path]) -> onnx.ModelProto:
    """One graph: the members side by side on the first member's input, logits averaged.

    Every member's names get a prefix (`m0/`, `m1/`, ...) except the shared input, so their
    weights and intermediate tensors cannot collide.
    """
    members = [onnx.load(str(path)) for path in paths]
    opsets = {(o.domain, o.version) for m in members for o in m.opset_import}
    if len(opsets) != len({domain for domain, _ in opsets}):
        raise EnsembleError(f"the members use different opset versions: {sorted(opsets)}")
    nodes, initializers, value_info, logits = [], [], [], []
    for index, member in enumerate(members):
        graph = onnx.compose.add_prefix(member, f"m{index}/", rename_inputs=False).graph
        nodes.extend(graph.node)
        initializers.extend(graph.initializer)
        value_info.extend(graph.value_info)
        logits.append(graph.output[0].name)
    scale = numpy_helper.from_array(np.array(1.0 / len(members), np.float32), "ensemble/scale")
    nodes += [helper.make_node("Sum", logits, ["ensemble/sum"]),
              helper.make_node("Mul", ["ensemble/sum", scale.name], [OUTPUT_NAME])]
    first = members[0].graph
    graph = helper.make_graph(nodes, "ensemble", list(first.input), list(first.output),
                              [*initializers, scale], value_info=value_info)
    model = helper.make_model(graph, opset_imports=members[0].opset_import,
                              ir_version=max(m.ir_version for m in members))
    onnx.checker.check_model(model)
    return model


def val_top1(path: Path, samples: Sequence[Sample]) -> float:
    """Top-1 of the model at `path` on the `val` rows (the rows that choose, never test)."""
    val = [s for s in samples if s.split == "val"]
    if not val:
        raise EnsembleError("no val rows in the data: an ensemble is judged on val")
    outputs = predict_split(Engine(path), val)
    return float((outputs.logits.argmax(axis=1) == outputs.labels).mean())


def write_ensemble(paths: Sequence[Path], out: Path, samples: Sequence[Sample], *,
                   version: str) -> ModelInfo:
    """Write the ensemble of the models at `paths` to `out`; returns its metadata, whose
    `ensemble` entry holds the val top-1 of each member and of the ensemble."""
    infos = [Engine(path).info for path in paths]
    _check_members(infos)
    members = [{"version": info.version, "architecture": info.architecture,
                "quantized": info.is_quantized, "val_top1": val_top1(path, samples)}
               for info, path in zip(infos, paths)]
    model = join_graphs(paths)
    info = infos[0].model_copy(update={
        "version": version,
        "architecture": " + ".join(info.architecture for info in infos),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": {},  # the members' training metrics say nothing of the ensemble
        "quantization": {},
        "ensemble": {"combine": COMBINE, "members": members, "val_top1": None},
    })
    out.parent.mkdir(parents=True, exist_ok=True)
    helper.set_model_props(model, info.to_metadata())
    onnx.save(model, str(out))  # loadable now (val_top1 opens it): measure it on val
    info.ensemble["val_top1"] = val_top1(out, samples)
    helper.set_model_props(model, info.to_metadata())
    onnx.save(model, str(out))
    Engine(out)  # ModelLoadError here rather than in the service
    return info


@dataclass(frozen=True)
class EnsembleResult:
    name: str
    version: str
    path: Path
    info: ModelInfo
    best_member: str  # the member version with the highest val top-1
    ensemble: Evaluation
    best: Evaluation  # of the best member, on the same rows
    comparison: dict[str, Any]  # compare_evaluations(ensemble, best member)
    promoted: bool

    @property
    def beats_members(self) -> bool:
        return beats_members(self.info)


def beats_members(info: ModelInfo) -> bool:
    """True when an ensemble's val top-1 is above every member's."""
    record = info.ensemble
    return record["val_top1"] > max(m["val_top1"] for m in record["members"])


def ensemble_versions(models_dir: Path, name: str, versions: Sequence[str],
                      samples: Sequence[Sample], *, promote: bool = False,
                      target_purity: float | None = None, note: str | None = None,
                      data_roots: Sequence[Path] = (), progress: bool = False
                      ) -> EnsembleResult:
    """Ensemble `name`'s `versions` into a new version, evaluate it, promote if asked.

    Members that cannot be joined, and data the members cannot be evaluated on (no val or
    test rows, unreadable images, unknown labels), are refused before anything is
    registered. `target_purity` and `note` default to those of the best member's card.
    """
    registry = ModelRegistry(models_dir)
    if len(set(versions)) != len(versions):
        raise EnsembleError(f"a version is named twice: {list(versions)}")
    paths = [registry.model_path(name, version) for version in versions]
    new_version = registry.next_version(name)
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / "model.onnx"
        info = write_ensemble(paths, staged, samples, version=new_version)
        scores = [m["val_top1"] for m in info.ensemble["members"]]
        best = versions[scores.index(max(scores))]
        best_card = registry.card(name, best) or {}
        target_purity = target_purity or best_card.get("target_purity", DEFAULT_TARGET_PURITY)
        note = note or best_card.get("data", {}).get("note")
        # the best member first: data it cannot be evaluated on registers nothing
        best_evaluation = run_evaluation(
            registry.model_path(name, best), samples, target_purity=target_purity, note=note,
            data_roots=data_roots, progress=progress)
        registry.add(name, staged, new_version)
    path = registry.model_path(name, new_version)
    ensemble = run_evaluation(path, samples, target_purity=target_purity, note=note,
                              data_roots=data_roots, progress=progress)
    write_evaluation(ensemble, path)  # card next to it, its own temperature stored in it
    comparison = compare_evaluations(ensemble, best_evaluation,
                                     (f"{name}:{new_version}", f"{name}:{best}"))
    promoted = promote and beats_members(info)
    if promoted:
        registry.promote(name, new_version)
    return EnsembleResult(name, new_version, path, info, best, ensemble, best_evaluation,
                          comparison, promoted)
