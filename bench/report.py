"""Render the raw results of `bench.run_all` as `bench/RESULTS.md`: targets first, then detail."""

from __future__ import annotations

import statistics
from typing import Any

HTTP_VS_LIMIT = 0.85
WS_VS_LIMIT = 0.90
VS_NAIVE = 6.0
IN_TIME_SHARE = 0.999
RSS_MB = 600.0
READY_S = 5.0


def _simd(machine: dict[str, Any]) -> str:
    simd = machine.get("simd")  # absent in results written before it was recorded
    if simd is None:
        return "vector extensions not recorded"
    return ", ".join(simd) if simd else "no AVX"


def render(results: dict[str, Any]) -> str:
    machine, model = results["machine"], results["model"]
    serve = results["serve"][0]
    lines = [
        "# Benchmark results",
        "",
        f"Written by `python -m bench.run_all` on {machine['date']}. Re-run it to refresh; "
        "see README.md \"Benchmarks\" for what each part measures.",
        "",
        "| | |",
        "|---|---|",
        f"| machine | {machine['cpu']} ({_simd(machine)}), {machine['cpu_count']} CPUs, "
        f"{machine['os']}, Python {machine['python']}, onnxruntime {machine['onnxruntime']} |",
        f"| other load | {_other_load(results)} |",
        f"| model | `{model['name']}:{model['version']}` {model['architecture']}"
        f"{' (int8)' if model.get('quantization') else ''}, "
        f"{len(model['class_names'])} classes, input {model['input_size'][0]}x"
        f"{model['input_size'][1]} (`{model['path']}`) |",
        f"| frames | {', '.join(f'{n} x {size}' for size, n in results['frames'].items())} "
        "JPEGs from `bench.make_frames` |",
        f"| how it ran | {results['pinning']}; serve layout {serve['layout']} "
        "(worker processes x onnxruntime threads) |",
        "",
        "## Targets",
        "",
        "| target | measured | result |",
        "|---|---|---|",
        *_target_rows(results),
        *_ratio_rounds(serve),
        "",
        "## Throughput and latency",
        "",
        "Closed loop: each stream sends its next frame when the previous answer is back "
        "(after a 503 or an error it pauses 50 ms). The serve line used here allows "
        f"{results['throughput_line']['max_in_flight']} frames in flight per worker and a "
        f"{results['throughput_line']['deadline_ms']:g} ms deadline, so frames that closed-loop "
        "streams keep queued count as throughput; the deadline scenario below uses the "
        "service defaults. Latency is measured by the client (send to answer). `client CPU` "
        "is the load generator's own CPU use (CPU-seconds per second). The last column "
        "counts the streams' connections held by each server process mid-run: the kernel "
        "hands a new connection to whichever worker accepts first, and a stream stays on "
        "its worker.",
        "",
        "| contender | frames | streams | frames/s | p50 ms | p95 ms | p99 ms | late | "
        "overload (503) | errors | client CPU | connections per server process |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *_load_rows(results),
        "",
        "## Decision-deadline scenario",
        "",
        "One stream per line, each a camera at a fixed rate stamping its capture time (the "
        "service's lines `line1`..`line4`, 80 ms deadline); a frame counts as in "
        "time when the service decided it before its fire time and the answer was back "
        "within the deadline.",
        "",
        "| transport | frames | streams x rate | deadline | sent | in time | share | p50 ms | "
        "p99 ms | late | overload |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *_deadline_rows(serve["deadline"]),
        "",
        "## Optimisations",
        "",
        *_optimisation_lines(results),
        "",
    ]
    return "\n".join(lines)


def inprocess_limit(results: dict[str, Any], frame_set: str) -> dict[str, Any] | None:
    """The best one-frame-at-a-time layout with the serving decode: the ceiling."""
    candidates = [r for r in results["inprocess"] if r["frame_set"] == frame_set
                  and r["batch"] == 1 and r["reduced_decode"]]
    return max(candidates, key=lambda r: r["fps"], default=None)


def _find(loads: list[dict[str, Any]], transport: str, frame_set: str,
          streams: int) -> dict[str, Any] | None:
    return next((r for r in loads if r["transport"] == transport
                 and r["frame_set"] == frame_set and r["streams"] == streams), None)


def _other_load(results: dict[str, Any]) -> str:
    before = results["before"]
    text = (f"CPU {before['cpu_busy_percent_before']:.0f}% busy before the run; load average "
            f"{results['machine']['load_average']} before, "
            f"{results['machine'].get('load_average_after')} after")
    if before["training_jobs"]:
        text += ("; **a training job was running: the machine was loaded and every "
                 "number is lower and noisier than on an idle machine**")
    return text


def _ratio_rounds(serve: dict[str, Any]) -> list[str]:
    """The slices behind the medians of the ratio targets, as a table."""
    rounds = serve.get("ratio_rounds") or []
    if not rounds:
        return []
    return [
        "",
        "Each ratio target is the median over these slices: HTTP and WS at the most streams, "
        "each measured between two slices of the in-process limit (the server idle "
        "meanwhile) and divided by their mean. The machine's speed drifts by 10-30% between "
        "minutes, so the first pair above, whose parts are minutes apart, is shown but not "
        "judged:",
        "",
        "| frames | transport | in-process before | frames/s | in-process after | ratio |",
        "|---|---|---|---|---|---|",
        *(f"| {r['frame_set']} | {r['transport'].upper()} | {r['limit_before']:.1f} | "
          f"{r['fps']:.1f} | {r['limit_after']:.1f} | {slice_ratio(r):.2f}x |" for r in rounds),
    ]


def slice_ratio(ratio_round: dict[str, Any]) -> float:
    """A service slice's frames/s over the mean of the limit slices before and after it."""
    return _ratio(ratio_round["fps"],
                  (ratio_round["limit_before"] + ratio_round["limit_after"]) / 2)


def _ratio(fps: float, limit_fps: float) -> float:
    return fps / limit_fps if limit_fps else float("inf")


def _verdict(ok: bool) -> str:
    return "pass" if ok else "**FAIL**"


def _target_rows(results: dict[str, Any]) -> list[str]:
    serve = results["serve"][0]
    naive = results.get("naive")
    streams = max(results["plan"]["streams"])
    rows = []
    for frame_set in results["frames"]:
        limit = inprocess_limit(results, frame_set)
        naive_run = _find(naive["loads"], "naive", frame_set, streams) if naive else None
        for transport, need in (("http", HTTP_VS_LIMIT), ("ws", WS_VS_LIMIT)):
            run = _find(serve["loads"], transport, frame_set, streams)
            if run is None or limit is None:
                continue
            ratio = _ratio(run["fps"], limit["fps"])
            measured = (f"{run['fps']:.1f} / {limit['fps']:.1f} frames/s ({limit['layout']}) "
                        f"= {ratio:.2f}x")
            ratios = [slice_ratio(r) for r in serve.get("ratio_rounds", [])
                      if r["frame_set"] == frame_set and r["transport"] == transport]
            if ratios:
                ratio = statistics.median(ratios)
                measured += (f" (minutes apart); median of {len(ratios)} slices "
                             f"({', '.join(f'{x:.2f}' for x in ratios)}) = **{ratio:.2f}x**")
            rows.append(f"| {transport.upper()} at {streams} streams >= {need}x in-process "
                        f"({frame_set}) | {measured} | {_verdict(ratio >= need)} |")
            if naive_run:
                rows.append(_naive_row(transport, streams, frame_set, run, naive_run))
    for run in serve["deadline"]:
        share = run["in_time_share"]
        rows.append(f"| deadline scenario ({run['transport'].upper()}) >= "
                    f"{IN_TIME_SHARE:.1%} in time | {run['in_time']}/{run['sent']} = "
                    f"{share:.2%}, p99 {run['p99_ms']:.1f} ms | "
                    f"{_verdict(share >= IN_TIME_SHARE)} |")
    rows.append(f"| serve RSS < {RSS_MB:g} MB (sum over its processes) | "
                f"{serve['rss_mb']:.0f} MB (PSS {serve['pss_mb']:.0f} MB) | "
                f"{_verdict(serve['rss_mb'] < RSS_MB)} |")
    rows.append(f"| `serve` ready < {READY_S:g} s | {serve['ready_s']:.2f} s | "
                f"{_verdict(serve['ready_s'] < READY_S)} |")
    return rows


def _naive_row(transport: str, streams: int, frame_set: str, run: dict[str, Any],
               naive_run: dict[str, Any]) -> str:
    target = f"{transport.upper()} at {streams} streams >= {VS_NAIVE:g}x naive ({frame_set})"
    if not naive_run["fps"]:
        return f"| {target} | the naive service decided no frame in the window | n/a |"
    ratio = run["fps"] / naive_run["fps"]
    return (f"| {target} | {run['fps']:.1f} / {naive_run['fps']:.1f} frames/s = {ratio:.1f}x "
            f"| {_verdict(ratio >= VS_NAIVE)} |")


def _load_row(name: str, run: dict[str, Any]) -> str:
    return (f"| {name} | {run['frame_set']} | {run['streams']} | {run['fps']:.1f} | "
            f"{run['p50_ms']:.1f} | {run['p95_ms']:.1f} | {run['p99_ms']:.1f} | {run['late']} | "
            f"{run['overload']} | {run['error']} | {run['client_cpu']:.2f} | "
            f"{' + '.join(map(str, run.get('connections', []))) or '-'} |")


def _load_rows(results: dict[str, Any]) -> list[str]:
    rows = []
    for frame_set in results["frames"]:
        limit = inprocess_limit(results, frame_set)
        if limit:
            rows.append(f"| in-process limit ({limit['layout']}) | {frame_set} | - | "
                        f"{limit['fps']:.1f} | {limit['p50_ms']:.1f} | {limit['p95_ms']:.1f} | "
                        f"{limit['p99_ms']:.1f} | - | - | - | - | - |")
        for serve in results["serve"]:
            for run in serve["loads"]:
                if run["frame_set"] == frame_set:
                    name = f"serve {serve['layout']} {run['transport'].upper()}"
                    rows.append(_load_row(name, run))
        for run in (results.get("naive") or {}).get("loads", []):
            if run["frame_set"] == frame_set:
                rows.append(_load_row("naive", run))
    return rows


def _deadline_rows(runs: list[dict[str, Any]]) -> list[str]:
    return [f"| {r['transport'].upper()} | {r['frame_set']} | {r['streams']} x {r['rate']:g}/s | "
            f"{r['deadline_ms']:g} ms | {r['sent']} | {r['in_time']} | {r['in_time_share']:.2%} | "
            f"{r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['late']} | {r['overload']} |"
            for r in runs]


def _optimisation_lines(results: dict[str, Any]) -> list[str]:
    out = ["In-process (decode + onnxruntime, no HTTP), frames/s:", "",
           "| layout (processes x threads) | batch | reduced JPEG decode | "
           + " | ".join(results["frames"]) + " |",
           "|---|---|---|" + "---|" * len(results["frames"])]
    variants = sorted({(r["layout"], r["batch"], r["reduced_decode"])
                       for r in results["inprocess"]},
                      key=lambda v: (v[1], not v[2], v[0]))
    for layout, batch, reduced in variants:
        cells = []
        for frame_set in results["frames"]:
            run = next((r for r in results["inprocess"] if r["frame_set"] == frame_set
                        and (r["layout"], r["batch"], r["reduced_decode"])
                        == (layout, batch, reduced)), None)
            cells.append(f"{run['fps']:.1f}" if run else "-")
        out.append(f"| {layout} | {batch} | {'on' if reduced else 'off'} | "
                   + " | ".join(cells) + " |")
    out += ["", *_inprocess_lines(results), *_serve_layout_lines(results),
            *_copy_line(results), *_quantize_lines(results)]
    return out


def _inprocess_fps(results: dict[str, Any], frame_set: str, layout: str, batch: int = 1,
                   reduced: bool = True) -> float | None:
    return next((r["fps"] for r in results["inprocess"] if r["frame_set"] == frame_set
                 and r["layout"] == layout and r["batch"] == batch
                 and r["reduced_decode"] == reduced), None)


def _change(new: float, old: float) -> str:
    return f"{new:.1f} vs {old:.1f} frames/s ({(new / old - 1) * 100:+.0f}%)"


def _inprocess_lines(results: dict[str, Any]) -> list[str]:
    """What the in-process variants say about each optimisation, each against the same
    layout without it."""
    out = []
    for frame_set in results["frames"]:
        runs = [r for r in results["inprocess"] if r["frame_set"] == frame_set]
        for run in (r for r in runs if not r["reduced_decode"]):
            reduced = _inprocess_fps(results, frame_set, run["layout"])
            if reduced:
                out.append(f"- Reduced-size JPEG decode, {frame_set}, {run['layout']}: on vs off "
                           f"{_change(reduced, run['fps'])}.")
        for run in (r for r in runs if r["batch"] > 1):
            single = _inprocess_fps(results, frame_set, run["layout"])
            if single:
                verdict = "pays" if run["fps"] > 1.05 * single else "does not pay"
                out.append(f"- Micro-batching, {frame_set}, {run['layout']}: batches of "
                           f"{run['batch']} vs one frame at a time {_change(run['fps'], single)}: "
                           f"it {verdict} here.")
    if any(r["batch"] > 1 for r in results["inprocess"]):
        out.append("- `scrapvision serve` micro-batches only when `max_batch` > 1 (default 1, "
                   "from these figures); its worker processes x onnxruntime threads layout is "
                   "configurable.")
    return out


def _serve_layout_lines(results: dict[str, Any]) -> list[str]:
    if len(results["serve"]) < 2:
        return []
    streams = max(results["plan"]["streams"])
    frame_set = next(iter(results["frames"]))
    cells = []
    for serve in results["serve"]:
        for transport in ("http", "ws"):
            run = _find(serve["loads"], transport, frame_set, streams)
            if run:
                cells.append(f"{serve['layout']} {transport.upper()} {run['fps']:.1f}")
    return [f"- `scrapvision serve` layouts (worker processes x onnxruntime threads; "
            "inference on each worker's event loop or in threads sharing its session) at "
            f"{streams} streams, {frame_set}, frames/s: " + "; ".join(cells) + ". "
            "Ready in " + ", ".join(f"{s['layout']} {s['ready_s']:.2f} s"
                                      for s in results["serve"]) + "."]


def _copy_line(results: dict[str, Any]) -> list[str]:
    limit = inprocess_limit(results, list(results["frames"])[-1])
    if not limit:
        return []
    share = results["copy_cost_us"] / (limit["p50_ms"] * 1000)
    return [f"- One extra copy of a {list(results['frames'])[-1]} frame body costs "
            f"{results['copy_cost_us']:.1f} µs, {share:.2%} of a frame's decode + inference: "
            "reading frames without copies is right but not where the time goes."]


def _quantize_lines(results: dict[str, Any]) -> list[str]:
    q = results.get("quantize")
    served_int8 = results["model"].get("quantization")
    if not q and served_int8:
        return [f"- int8 static quantisation: the served model is int8 (quantised from version "
                f"{served_int8.get('source_version')} by `scrapvision models quantize`; both "
                "cards hold the top-1 comparison). For float vs int8 speed, run "
                "`python -m bench.quantize --model <float version>`."]
    if not q:
        return ["- int8 static quantisation: not measured in this run (pass --quantize-data)."]
    keep = "kept" if q["keep_int8"] else "not kept"
    return [f"- int8 static quantisation (QDQ, per-channel, {q['calibration_rows']} train "
            f"frames to calibrate): top-1 on {q['test_rows']} test rows {q['fp32_top1']:.2f}% "
            f"-> {q['int8_top1']:.2f}% (drop {q['top1_drop_points']:.2f} points), in-process "
            f"2x1 {q['fp32_fps']:.1f} -> {q['int8_fps']:.1f} frames/s ({q['speedup']:.2f}x), "
            f"{q['fp32_mb']:.1f} -> {q['int8_mb']:.1f} MB: {keep} (rule: drop <= 0.5 points "
            "and faster)."]
