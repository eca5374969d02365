"""Pipeline benchmark: from "study complete" to "SR delivered" for a CT, a chest X-ray and a brain MRI study.

``python -m bench.pipeline`` sets up the embedded deployment in a temporary HOME (SQLite database, the embedded SQLite
broker, demo models) with a real Orthanc as the destination, starts ``m3edge worker`` processes, and:

1. latency, one worker: for each study type, after one warm-up study (models load once per worker), ``--rounds``
   studies one after the other; each from the hook's call (the run is created) to the SR delivered to Orthanc (the
   deliver stage done). Model time is the wall-clock union of the expert's ``run`` and VILA-M3's consultations (as the
   stages report them; the expert may run beside the model's first turn); the rest is our own overhead (reading the spool, routing, volumes, writing npz/SR/SEG/SC, the database, the
   broker's hops, C-STORE). Target: overhead under 1 s per study;
2. throughput: ``--studies`` studies (the three types in turn) handed over at once, with one worker, then two;
   studies per hour from the first hand-over to the last SR delivered;
3. the peer, measured in this run: after each measured study, the same models called directly in this process on
   the same arrays (no pipeline), and the ratio pipeline latency / bare model time.

The studies are the end-to-end test's (``tests.support.pipeline_study``): tiny, so model time is small and our overhead
shows. The demo models are written with 64^3 windows (as the tests do) unless ``--full-demo`` asks for exactly what
``m3edge models demo`` writes (128^3 / 240 x 240 x 160 windows: model time then dominates). The machine's other load
shows in every number: compare within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("ct", "cxr", "mri")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Deployment:
    def __init__(self, root: Path, models: Path, destination: str, worker_threads: int = 0) -> None:
        from service.composition import build_pipeline
        from service.config import Settings
        from service.db.migrate import upgrade_database
        from service.db.session import create_db_engine, make_session_factory

        self.home = root / "home"
        self.home.mkdir(parents=True)
        (self.home / "models").symlink_to(models, target_is_directory=True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("M3EDGE_")}
        self.env.update(M3EDGE_HOME=str(self.home), M3EDGE_DESTINATIONS=destination, M3EDGE_VLM_MAX_NEW_TOKENS="12",
                        M3EDGE_PIPELINE_SWEEP_SECONDS="5", M3EDGE_LOG_LEVEL="WARNING", TCP_NODELAY="1",
                        M3EDGE_WORKER_CPU_THREADS=str(worker_threads))
        self.settings = Settings(home=self.home, destinations=[destination], vlm_max_new_tokens=12)
        upgrade_database(self.settings.effective_database_url)
        self.factory = make_session_factory(create_db_engine(self.settings.effective_database_url))
        self.intake = build_pipeline(self.settings, self.factory).intake
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> None:
        name = f"bench-{len(self.workers)}@localhost"
        log = (self.home / f"{name}.log").open("ab")
        self.workers.append(subprocess.Popen(
            [sys.executable, "-c", "from service.cli.main import main; main()", "worker", "--name", name],
            env=self.env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT))

    def stop(self) -> None:
        for worker in self.workers:
            worker.terminate()
        for worker in self.workers:
            worker.wait(timeout=60)

    def hand_over(self, kind: str) -> str:
        from tests.support.pipeline_study import brain_study, ct_study, cxr_study, store_in_spool

        datasets = {"ct": ct_study, "cxr": cxr_study, "mri": brain_study}[kind]()
        uid = store_in_spool(self.settings, self.factory, datasets)
        self.intake.on_study_complete(uid)
        return uid

    def wait_done(self, uids: list[str], timeout: float = 600) -> None:
        from sqlalchemy import select

        from service.db.models import Study, StudyStatus
        from service.db.session import session_scope

        deadline = time.monotonic() + timeout
        while True:
            with session_scope(self.factory) as session:
                rows = session.execute(select(Study.study_uid, Study.status).where(Study.study_uid.in_(uids))).all()
                states = dict(rows)
            failed = {u: s for u, s in states.items() if s in (StudyStatus.FAILED, StudyStatus.SKIPPED)}
            if failed:
                raise RuntimeError(f"studies failed: {failed}; see {self.home}/*.log")
            if all(states.get(u) is StudyStatus.DONE for u in uids):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"not done within {timeout} s: {states}")
            time.sleep(0.05)

    def timeline(self, uid: str) -> dict:
        """Seconds from the run's creation to the SR delivered, and the model seconds the stages report."""
        from sqlalchemy import select

        from service.db.models import PipelineRun, Study
        from service.db.session import session_scope

        with session_scope(self.factory) as session:
            run = session.scalars(select(PipelineRun).join(Study, Study.id == PipelineRun.study_id)
                                  .where(Study.study_uid == uid)).one()
            stages = {s.stage: s for s in run.stages}
            start, end = run.created_at, stages["deliver"].finished_at
            model = model_seconds(stages["expert"].result, stages["vlm"].result)
            per_stage = {name: (s.finished_at - s.started_at).total_seconds() for name, s in stages.items()}
            queued = sum((s.started_at - (s.queued_at or s.started_at)).total_seconds() for s in stages.values())
            return {"total_s": (end - start).total_seconds(), "model_s": model, "stages_s": per_stage,
                    "queue_wait_s": queued, "created": start, "finished": end}


def model_seconds(expert: dict, vlm: dict) -> float:
    """Model time on the study's critical path: the union of the expert's inference and VILA-M3's consultations in
    wall-clock time (the expert may run beside the first turn, or the first turn may wait for it: a plain sum would
    count those seconds twice and hide our own overhead)."""
    windows = [w for w in (expert.get("model_window"), vlm.get("model_window")) if w]
    if len(windows) < 2:  # results from before the windows were recorded
        return expert["elapsed_s"] + vlm["model_s"]
    (a0, a1), (b0, b1) = sorted(windows)
    return (a1 - a0) + (b1 - b0) - max(0.0, min(a1, b1) - b0)


class BareModels:
    """The peer: the same expert and VILA-M3 calls, made directly in this process on a stage's own inputs (no
    pipeline), right after the pipeline ran that study, so both see the machine's load of the same moment."""

    def __init__(self, deployment: Deployment) -> None:
        from engines.agent import AgentSettings, ConsultationAgent
        from engines.experts import ExpertRegistry
        from service.pipeline.work.vlm_loader import load_vlm

        settings = deployment.settings
        self.deployment = deployment
        self.registry = ExpertRegistry(settings.models_dir, "auto", settings.engines_dir)
        vlm = load_vlm(settings)
        self.agent = ConsultationAgent(vlm.model, [], template=vlm.template,
                                       settings=AgentSettings(max_new_tokens=12, max_total_new_tokens=24))

    def seconds(self, uid: str) -> float:
        from sqlalchemy import select

        from engines.agent import ConsultationRequest
        from service.db.models import PipelineRun, Study
        from service.db.session import session_scope
        from service.pipeline.contracts import PreparedInput, Route

        with session_scope(self.deployment.factory) as session:
            run = session.scalars(select(PipelineRun).join(Study, Study.id == PipelineRun.study_id)
                                  .where(Study.study_uid == uid)).one()
            route = Route.read(run.route)
            prepared = PreparedInput.read(next(s.result for s in run.stages if s.stage == "prepare"))
        inputs = prepared.expert_input()
        started = time.perf_counter()
        result = self.registry.get(route.expert.value).run(inputs, route.argument)
        self.agent.consult(ConsultationRequest(route.questions[0], route.modality, inputs,
                                               brats_sequences=route.brats_sequences, ready_results=(result,)))
        return time.perf_counter() - started


def _throughput(deployment: Deployment, count: int) -> float:
    uids = [deployment.hand_over(KINDS[i % len(KINDS)]) for i in range(count)]
    deployment.wait_done(uids)
    times = [deployment.timeline(uid) for uid in uids]
    wall = (max(t["finished"] for t in times) - min(t["created"] for t in times)).total_seconds()
    return count / wall * 3600


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured studies per type (after one warm-up)")
    parser.add_argument("--studies", type=int, default=6,
                        help="studies handed over at once for the throughput (0: measure the latency only)")
    parser.add_argument("--models", type=Path, help="a models folder to reuse (default: write demo models)")
    parser.add_argument("--full-demo", action="store_true", help="exactly what `m3edge models demo` writes")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    parser.add_argument("--worker-threads", type=int, default=0,
                        help="WORKER_CPU_THREADS of each worker (0: the runtimes' default, one per core)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"study types to measure the latency of, comma-separated (default: {','.join(KINDS)})")
    args = parser.parse_args(argv)
    kinds = tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if not kinds or set(kinds) - set(KINDS):
        parser.error(f"--kinds takes some of {', '.join(KINDS)}")
    sys.path.insert(0, str(ROOT))
    from tests.support.orthanc import OrthancServer

    with tempfile.TemporaryDirectory(prefix="m3edge-bench-pipeline-") as temporary:
        root = Path(temporary)
        models = args.models
        if models is None:
            _log("writing demo models ...")
            models = root / "models"
            if args.full_demo:
                from engines.model_store.demo import write_demo_models

                write_demo_models(models)
            else:
                from tests.support.pipeline_study import small_demo_models

                small_demo_models(models)
        with OrthancServer(root / "orthanc") as orthanc:
            deployment = Deployment(root, models.resolve(), f"{orthanc.ae_title}@127.0.0.1:{orthanc.dicom_port}",
                                    worker_threads=args.worker_threads)
            try:
                deployment.start_worker()
                _log("warm-up (models load once per worker) ...")
                warm = [deployment.hand_over(kind) for kind in kinds]
                deployment.wait_done(warm)
                bare = BareModels(deployment)
                for uid in warm:
                    bare.seconds(uid)  # the peer warms up too
                latency: dict[str, list[dict]] = {kind: [] for kind in kinds}
                for _ in range(args.rounds):
                    for kind in kinds:
                        uid = deployment.hand_over(kind)
                        deployment.wait_done([uid])
                        latency[kind].append({**deployment.timeline(uid), "bare_s": bare.seconds(uid)})
                one = two = None
                if args.studies:
                    _log("throughput, 1 worker ...")
                    one = _throughput(deployment, args.studies)
                    deployment.start_worker()
                    warm = [deployment.hand_over(kind) for kind in KINDS * 2]  # the second worker loads its models
                    deployment.wait_done(warm)
                    _log("throughput, 2 workers ...")
                    two = _throughput(deployment, args.studies)
            finally:
                deployment.stop()
    report = _report(latency, one, two)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return report


def _report(latency: dict[str, list[dict]], one: float | None, two: float | None) -> dict:
    """Medians per study type. Overhead = total - model; of it, ``writers`` is the report stage (SR, SEG, SC built
    by highdicom and written by pydicom) and ``orchestration`` all the rest (broker hops, database, spool reads,
    routing, volumes, npz files, C-STORE)."""
    rows = {}
    print(f"{'study':<6}{'complete->SR s':>15}{'model s':>9}{'overhead s':>12}{'= writers':>11}{'+ orchestr.':>13}"
          f"{'(queue hops)':>14}{'bare models s':>15}{'pipeline/bare':>15}")
    for kind, samples in latency.items():
        def median(values) -> float:
            return statistics.median(list(values))

        total = median(s["total_s"] for s in samples)
        model = median(s["model_s"] for s in samples)
        overhead = median(s["total_s"] - s["model_s"] for s in samples)
        writers = median(s["stages_s"]["report"] for s in samples)
        queued = median(s["queue_wait_s"] for s in samples)
        bare = median(s["bare_s"] for s in samples)
        ratio = median(s["total_s"] / s["bare_s"] for s in samples)
        stages = {name: round(median(s["stages_s"][name] for s in samples), 3) for name in samples[0]["stages_s"]}
        rows[kind] = {"total_s": total, "model_s": model, "overhead_s": overhead, "writers_s": writers,
                      "orchestration_s": overhead - writers, "queue_wait_s": queued, "bare_models_s": bare, "pipeline_over_bare": ratio,
                      "stages_s": stages}
        print(f"{kind:<6}{total:>15.2f}{model:>9.2f}{overhead:>12.2f}{writers:>11.2f}{overhead - writers:>13.2f}"
              f"{queued:>14.2f}{bare:>15.2f}{ratio:>15.2f}")
    for kind, row in rows.items():
        print(f"  {kind} stage seconds (median): " + ", ".join(f"{k} {v:.2f}" for k, v in row["stages_s"].items()))
    if one is None or two is None:
        return {"latency": rows}
    print(f"throughput: {one:.0f} studies/hour with 1 worker, {two:.0f} with 2 workers (ratio {two / one:.2f})")
    return {"latency": rows, "studies_per_hour": {"1": one, "2": two}}


if __name__ == "__main__":
    main()
