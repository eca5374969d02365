"""The run's summary: one JSON file (everything measured) and one markdown file (the tables a person reads)."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["write_summary"]


def _number(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)


def _table(rows: list[dict], columns: list[str]) -> list[str]:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(_number(row.get(column)) if not isinstance(row.get(column), dict)
                                        else ", ".join(f"{k}: {_number(v)}" for k, v in row[column].items())
                                        for column in columns) + " |")
    return lines


def _markdown(summary: dict) -> str:
    lines = [f"# m3edge GPU check{' (DRY RUN: CPU, tiny shapes)' if summary['dry_run'] else ''}", ""]
    environment = summary["environment"]
    lines += [f"- {key}: {value}" for key, value in environment.items()]
    lines += [f"- total: {summary['elapsed_s']:.0f} s of a {summary['budget_s']:.0f} s budget", ""]
    tests = summary.get("gpu_tests", {})
    lines += ["## `gpu` marker tests", "", f"{tests.get('outcome', tests.get('skipped', tests.get('error', '-')))}", ""]
    parity = summary.get("parity", [])
    if parity:
        lines += ["## CUDA vs CPU parity (random weights, autocast)", ""]
        lines += _table(parity, ["network", "candidate", "max_abs", "max_relative_to_range", "finite", "dice_per_label",
                                 "decision_agreement"])
        lines.append("")
    speed = summary.get("speed", [])
    if speed:
        lines += ["## Expert network speed per window (ms, median)", ""]
        lines += _table(speed, ["network", "input_shape", "eager_ms", "cuda_graph_ms", "compiled_ms", "compile_s",
                                "cuda_graph", "compile"])
        lines.append("")
    vlm = summary.get("vlm")
    if isinstance(vlm, dict):
        lines += ["## VILA-M3-8B-shaped model (random weights)", "",
                  f"{vlm.get('shape')}, {vlm.get('dtype')}, batch 1, {_number(vlm.get('parameters_b'))} B parameters, "
                  f"weights {_number(vlm.get('weights_gib'))} GiB, peak memory {_number(vlm.get('peak_memory_gib'))} GiB", ""]
        variants = [{"variant": name, **vlm[name]} for name in ("eager", "compiled") if isinstance(vlm.get(name), dict)]
        lines += _table(variants, ["variant", "prompt_tokens", "new_tokens", "time_to_first_token_ms", "tokens_per_s",
                                   "image_encode_ms", "warmup_s"])
        if isinstance(vlm.get("compiled"), str):
            lines.append(f"\ncompiled: {vlm['compiled']}")
        lines.append("")
    check = summary.get("vlm_backends")
    if isinstance(check, dict):
        report = check.get("report") or {}
        lines += ["## `m3edge vlm check`", "", f"{check.get('mode', '')}", "",
                  f"verdict: **{report.get('verdict', check.get('error', '-'))}** "
                  f"(configured: {report.get('candidate', '-')}, tolerance {report.get('tolerance', '-')} nats)", ""]
        lines += _table(report.get("cases", []), ["name", "tokens_equal", "first_difference", "reference_first_logprob",
                                                  "candidate_first_logprob", "error"])
        lines.append("")
    backends = summary.get("backends")
    if isinstance(backends, dict):
        lines += [f"## {backends.get('candidate', 'tensorrt')} vs torch (experts end to end)", ""]
        if "engine_build" in backends:
            build = backends["engine_build"]
            lines.append(f"`{build['command']}`: exit {build['exit_status']} in {build['seconds']:.0f} s\n")
        lines += _table(backends.get("rows", []), ["expert", "candidate_backend", "candidate_fell_back", "speedup",
                                                   "dice_per_label", "classification_agreement", "max_score_difference"])
        lines.append("")
    missing = summary.get("missing_packages")
    if missing:
        lines += ["## Missing packages", "", ", ".join(missing), ""]
    errors = {k: v for k, v in summary.get("errors", {}).items()}
    if errors:
        lines += ["## Errors", ""] + [f"- {key}: {value}" for key, value in errors.items()] + [""]
    return "\n".join(lines)


def write_summary(summary: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "gpu_check.json"
    json_path.write_text(json.dumps(summary, indent=2, default=str) + "\n")
    markdown_path = out_dir / "gpu_check.md"
    markdown_path.write_text(_markdown(summary))
    return json_path, markdown_path
