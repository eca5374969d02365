"""WADO-RS study metadata benchmark: m3edge against Orthanc on the same study, a CT and its 1,950-frame SEG.

``python -m bench.wado_metadata`` makes a CT series (``--slices`` slices of ``--size`` x ``--size``) and a BINARY SEG
of ``--segments`` segments present in every slice but the last (60 x 33 -> 1,947 frames, the size of the study that
took 4.9 s before the metadata was kept per instance), sends both with dcmtk's storescu to m3edge's DICOM node (the real
ingest path: the node keeps each instance's DICOM JSON) and uploads them to an Orthanc (SQLite index, with its
DICOMweb plugin when ``libOrthancDicomWeb.so`` is installed, else its REST ``/studies/{id}/instances-tags``). Then,
``--rounds`` times with the order rotating, it asks each for the study's metadata over HTTP on loopback:

- m3edge: ``GET /dicomweb/studies/{uid}/metadata`` (a reviewer's bearer token; the request is audited);
- Orthanc: ``GET /dicom-web/studies/{uid}/metadata`` (or ``/studies/{id}/instances-tags``);
- before: what m3edge did until now, in process without HTTP (a lower bound of it): every file's header read with
  pydicom (``stop_before_pixels``) and turned into DICOM JSON.

It prints the medians, the body sizes and the ratios m3edge/Orthanc and m3edge/before. The machine may be shared:
compare only within one run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DICOMWEB_PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _study(folder: Path, size: int, slices: int, segments: int) -> tuple[str, list[Path]]:
    """The CT files and the SEG file in ``folder``; returns the Study Instance UID and every path."""
    from dicom_node.results import (AlgorithmIdentity, ExpertFindings, LabelSegmentation, ResultUids,
                                    SegCompression, StructureSegment, build_segmentation)
    from tests.support.synthetic_series import SyntheticStudy, axial_geometry, ct_series

    geometry = axial_geometry(size, size, slices, pixel_spacing=(0.78, 0.78), slice_spacing=1.5)
    values = np.random.default_rng(3).normal(40, 30, (size, size, slices)).astype(np.float32)
    series = ct_series(values, geometry, study=SyntheticStudy(patient_id="M3E-BENCH"))
    paths = []
    for index, dataset in enumerate(series):
        path = folder / f"ct-{index:04d}.dcm"
        dataset.save_as(path, enforce_file_format=True)
        paths.append(path)
    first, second = series[0], series[1]
    columns, rows = np.asarray(first.ImageOrientationPatient[:3], float), np.asarray(first.ImageOrientationPatient[3:])
    lps = np.eye(4)
    lps[:3, 0] = columns * float(first.PixelSpacing[1])
    lps[:3, 1] = rows * float(first.PixelSpacing[0])
    lps[:3, 2] = np.subtract(second.ImagePositionPatient, first.ImagePositionPatient, dtype=float)
    lps[:3, 3] = np.asarray(first.ImagePositionPatient, float)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps
    labels = np.zeros((size, size, slices), dtype=np.uint8)  # (X, Y, Z)
    side = max(2, size // 8)
    for label in range(1, segments + 1):  # a small square per segment, in every slice but the last
        x, y = ((label - 1) % 6) * side + 1, ((label - 1) // 6) * side + 1
        labels[x:x + side - 1, y:y + side - 1, :slices - 1] = label
    names = tuple(StructureSegment(f"structure {label}", (label,), 1.0) for label in range(1, segments + 1))
    expert = AlgorithmIdentity("VISTA3D", "0.5.4", "NVIDIA", "tensorrt", "sha256:" + "cd" * 32, demo=True)
    findings = ExpertFindings(expert, tuple(series), LabelSegmentation(labels, affine, names))
    seg = build_segmentation(findings, ResultUids("1.2.826.0.1.3680043.10.1177", str(first.StudyInstanceUID),
                                                  "run-bench"), compression=SegCompression.NONE)
    _log(f"SEG: {int(seg.NumberOfFrames)} frames, {len(seg.SegmentSequence)} segments")
    seg_path = folder / "seg.dcm"
    seg.save_as(seg_path, enforce_file_format=True)
    return str(first.StudyInstanceUID), [*paths, seg_path]


def _before(paths: list[Path]) -> bytes:
    """The metadata as m3edge made it per request until now: every header read and turned into DICOM JSON."""
    from pydicom import dcmread

    documents = []
    for path in paths:
        dataset = dcmread(path, stop_before_pixels=True)
        for element in list(dataset):
            if element.VR in {"OB", "OD", "OF", "OL", "OV", "OW", "UN"} and element.value is not None \
                    and len(element.value) > 1024:
                del dataset[element.tag]
        documents.append(dataset.to_json_dict())
    return json.dumps(documents).encode()


class _Orthanc:
    def __init__(self, workdir: Path) -> None:
        from tests.support.orthanc import OrthancServer

        plugin = DICOMWEB_PLUGIN.is_file()

        class Server(OrthancServer):
            def configuration(self) -> dict:
                config = super().configuration()
                if plugin:
                    config["Plugins"] = [str(DICOMWEB_PLUGIN)]
                    config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/", "EnableWado": True}
                return config

        self.server = Server(workdir)
        self.plugin = plugin

    def __enter__(self):
        self.server.start()
        return self

    def __exit__(self, *_exc) -> None:
        self.server.stop()


def _timed(function, rounds_seconds: list[float]):
    started = time.perf_counter()
    result = function()
    rounds_seconds.append(time.perf_counter() - started)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.wado_metadata", description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="rows and columns of the CT (default 256)")
    parser.add_argument("--slices", type=int, default=60, help="CT slices (default 60)")
    parser.add_argument("--segments", type=int, default=33, help="SEG segments, each in every slice but the last")
    parser.add_argument("--rounds", type=int, default=7, help="requests per target (median)")
    parser.add_argument("--json", type=Path, help="also write the numbers here")
    args = parser.parse_args(argv)

    import httpx

    from dicom_node.scp import DicomNode
    from service.api.app import create_app
    from service.db.session import create_db_engine, make_session_factory, session_scope
    from service.db.migrate import upgrade_database
    from service.dicomweb.metadata_keeper import MetadataKeeper
    from service.ingest import DatabaseRecorder
    from service.pipeline.intake import PipelineIntake
    from service.pipeline.ledger import PipelineLedger
    from service.security import add_user
    from tests.support.api_server import running_app
    from tests.support.dcmtk import storescu
    from tests.support.scp_node import node_settings

    work = Path(tempfile.mkdtemp(prefix="m3edge-bench-wado-"))
    try:
        files = work / "files"
        files.mkdir()
        study_uid, paths = _study(files, args.size, args.slices, args.segments)
        settings = node_settings(work / "home", study_idle_seconds=3600, study_release_grace_seconds=0)
        settings.spool_dir.mkdir(parents=True)
        upgrade_database(settings.effective_database_url)
        session_factory = make_session_factory(create_db_engine(settings.effective_database_url))
        recorder = DatabaseRecorder(session_factory).start()
        node = DicomNode(settings, recorder)
        node.start()
        try:
            sent = storescu(node.port, paths, timeout=600, extra=["-R"])  # propose what the files need (SEG)
            if sent.returncode != 0:
                raise RuntimeError(f"storescu failed: {sent.output[-2000:]}")
        finally:
            node.stop()
            recorder.close()
        MetadataKeeper(session_factory, settings.spool_dir).keep_pending(quiet_seconds=0)  # what serve does once quiet
        with session_scope(session_factory) as session:
            _, token = add_user(session, "bench", "reviewer")

        class _Nothing:
            def __init__(self, ledger):
                self.ledger = ledger

            def dispatch(self, ticket, countdown=0):
                return True

            def deliver(self, run_id):
                return True

        ledger = PipelineLedger(session_factory)
        app = create_app(settings, session_factory, PipelineIntake(ledger, _Nothing(ledger)))
        seconds: dict[str, list[float]] = {"m3edge": [], "orthanc": [], "before": []}
        sizes: dict[str, int] = {}
        with running_app(app) as base, _Orthanc(work / "orthanc") as orthanc, httpx.Client(timeout=300) as client:
            for path in paths:
                orthanc.server.upload(path)
            orthanc_id = orthanc.server.study_ids()[0]
            peer_url = (f"http://127.0.0.1:{orthanc.server.http_port}/dicom-web/studies/{study_uid}/metadata"
                        if orthanc.plugin else
                        f"http://127.0.0.1:{orthanc.server.http_port}/studies/{orthanc_id}/instances-tags")
            targets = {
                "m3edge": lambda: client.get(f"{base}/dicomweb/studies/{study_uid}/metadata",
                                             headers={"Authorization": f"Bearer {token}"}),
                "orthanc": lambda: client.get(peer_url),
                "before": lambda: _before(paths),
            }
            names = list(targets)
            for name in names:  # warm-up: first requests load code and caches on both sides
                targets[name]()
            for round_ in range(args.rounds):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    result = _timed(targets[name], seconds[name])
                    body = result if isinstance(result, bytes) else result.content
                    if not isinstance(result, bytes) and result.status_code != 200:
                        raise RuntimeError(f"{name} answered {result.status_code}: {result.text[:300]}")
                    sizes[name] = len(body)
            m3edge_documents = len(json.loads(client.get(f"{base}/dicomweb/studies/{study_uid}/metadata",
                                                         headers={"Authorization": f"Bearer {token}"}).content))
        medians = {name: statistics.median(values) for name, values in seconds.items()}
        peer = "Orthanc DICOMweb plugin" if DICOMWEB_PLUGIN.is_file() else "Orthanc REST instances-tags"
        result = {
            "instances": m3edge_documents, "ct_slices": args.slices, "seconds": medians, "bytes": sizes, "peer": peer,
            "ratio_m3edge_to_orthanc": medians["m3edge"] / medians["orthanc"],
            "ratio_m3edge_to_before": medians["m3edge"] / medians["before"],
        }
        print(f"study: {args.slices} CT slices ({args.size}x{args.size}) + 1 SEG; {m3edge_documents} instances")
        for name, label in (("m3edge", "m3edge WADO-RS (kept per instance)"), ("orthanc", peer),
                            ("before", "before: every header read (in process)")):
            print(f"  {label:42s} {medians[name] * 1000:8.1f} ms  ({sizes[name] / 1e6:.1f} MB)")
        print(f"  ratio m3edge / Orthanc: {result['ratio_m3edge_to_orthanc']:.2f}   "
              f"m3edge / before: {result['ratio_m3edge_to_before']:.3f}")
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
