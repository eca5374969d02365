"""``m3edge vlm check``: does the configured VLM backend (trtllm-serve) answer as the in-process VILA-M3 does?

Six bundled consultations (a CT slice with its VISTA3D overlay, a chest radiograph with CXR predictions, a four-sequence
brain MR with its BraTS overlay; first and feedback turn each) go through the configured backend and through the
in-process model on the same checkpoint (``engines.vlm.backend_check``). Exit status 0: they agree (the same greedy
tokens, first-token log-probabilities within the tolerance); 1: they disagree; 2: the check could not run.
"""

from __future__ import annotations

import json
import sys

import typer

from service.cli.context import CliError, cli_context

__all__ = ["vlm_app"]

vlm_app = typer.Typer(help="Check the VILA-M3 backend.", no_args_is_help=True)


@vlm_app.command("check")
def check_command(
    ctx: typer.Context,
    max_new_tokens: int = typer.Option(16, min=1, max=256, help="Greedy tokens compared per consultation."),
    tolerance: float = typer.Option(
        0.1, min=0.0, help="Largest first-token log-probability difference (nats) still counted as agreement."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the whole report as JSON."),
) -> None:
    """Run the bundled consultations through the configured backend and the in-process one and compare them."""
    from engines.vlm import CheckpointError, VilaM3, VlmError
    from engines.vlm.backend_check import Verdict, check_cases, compare_backends
    from service.config import VlmBackend
    from service.pipeline.stages import PermanentStageError
    from service.pipeline.work.vlm_loader import load_vlm, vila_checkpoint_dir

    settings = cli_context(ctx).settings
    if settings.vlm_backend is VlmBackend.VILA:
        raise CliError("VLM_BACKEND is vila: the configured backend is the in-process model itself, nothing to compare; "
                       "set M3EDGE_VLM_BACKEND=openai and M3EDGE_VLM_URL to check a trtllm-serve deployment")
    try:
        configured = load_vlm(settings)
        reference = VilaM3(vila_checkpoint_dir(settings), template=configured.template, device=settings.vlm_device,
                           dtype=settings.vlm_dtype, projector_order=settings.vlm_projector_order)
    except (PermanentStageError, CheckpointError, VlmError, OSError, ValueError) as exc:
        raise CliError(f"cannot load the in-process VILA-M3 to compare with: {exc}") from exc
    cases = check_cases(configured.template, settings.vlm_placeholder_form, settings.agent_brats_images)
    report = compare_backends(reference, configured.model, cases, max_new_tokens=max_new_tokens, tolerance=tolerance,
                              timeout_s=settings.vlm_timeout_seconds)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=1))
    else:
        _print(report)
    if all(case.error for case in report.cases):
        print(f"m3edge: error: no consultation could be compared: {report.cases[0].error}", file=sys.stderr)
        raise typer.Exit(2)
    raise typer.Exit(0 if report.verdict is Verdict.AGREE else 1)


def _print(report) -> None:
    typer.echo(f"in-process: {report.reference}   configured: {report.candidate}   tolerance: {report.tolerance:g} nats")
    typer.echo(f"{'consultation':<18} {'tokens':<22} {'first-token logprob (in-process / configured)':<48}")
    for case in report.cases:
        if case.error:
            typer.echo(f"{case.name:<18} ERROR: {case.error}")
            continue
        tokens = "equal" if case.tokens_equal else f"differ at token {case.first_difference}"
        logprobs = f"{case.reference_first_logprob:.4f} / {case.candidate_first_logprob:.4f}"
        typer.echo(f"{case.name:<18} {tokens:<22} {logprobs} (difference {case.first_logprob_difference:.4f})")
        if not case.tokens_equal:
            shown = case.first_difference or 0
            typer.echo(f"{'':<18} in-process: {case.reference_tokens[shown:shown + 5]}  "
                       f"configured: {case.candidate_tokens[shown:shown + 5]}")
    verdict = report.verdict.value.upper()
    typer.echo(f"verdict: {verdict}: " + ("the configured backend answers as the in-process model does"
                                          if verdict == "AGREE" else
                                          "the configured backend does not answer as trained; keep M3EDGE_VLM_BACKEND=vila "
                                          "(README, \"VILA-M3 with TensorRT-LLM\")"))
