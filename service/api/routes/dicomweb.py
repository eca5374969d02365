"""DICOMweb under ``/dicomweb``: QIDO-RS (search), WADO-RS (instances, metadata) and STOW-RS (store).

Every route needs a token like the rest of the API; every search, retrieve, metadata read and store is an audit
event. STOW-RS streams each request through the node's own intake (``service.dicomweb.stow``), at most
``STOW_MAX_CONCURRENT_REQUESTS`` at a time per process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, FastAPI, Path, Query, Request
import anyio.from_thread
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.concurrency import run_in_threadpool

from dicom_node.dicomweb import FrameError, media_type_of, parse_frame_list, read_bulk_data, read_frames
from dicom_node.private_files import make_private_dirs
from service.api.deps import CurrentUser, SessionDep, client_address
from service.api.problems import Problem
from service.dicomweb.includefield import include_fields, parse_includefield
from service.dicomweb.metadata_documents import MetadataDocuments
from service.dicomweb.multipart import (
    FilePart,
    encode_bytes_parts,
    encode_parts,
    media_type_parameters,
    new_boundary,
)
from service.dicomweb.qido import MAX_LIMIT, QidoError, QidoLevel, parse_qido, search
from service.dicomweb.results import ResultInstances
from service.dicomweb.stow import StowReceiver, StowRefused
from service.dicomweb.wado import (
    NotAcceptable,
    frame_content_type,
    stored_files,
    wanted_transfer_syntax,
    wants_json,
)
from service.security import record_audit

__all__ = ["router"]

UID_PATTERN = r"^[0-9]+(\.[0-9]+)*$"
StudyUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="Study Instance UID")]
SeriesUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="Series Instance UID")]
InstanceUid = Annotated[str, Path(pattern=UID_PATTERN, max_length=64, description="SOP Instance UID")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="At most this many results")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Skip this many results")]

DICOM_JSON = "application/dicom+json"
STOW_RETRY_AFTER_SECONDS = 5
_STATE_LOCK = threading.Lock()
LOGGER = logging.getLogger(__name__)


@asynccontextmanager
async def _lifespan(app: FastAPI):
    yield
    receiver = getattr(app.state, "stow_receiver", None)
    if receiver is not None:
        receiver.intake.store.close()  # files and records what its journal holds
        receiver.intake.recorder.close()


router = APIRouter(prefix="/dicomweb", tags=["dicomweb"], lifespan=_lifespan)


def _base(request: Request) -> str:
    return str(request.base_url).rstrip("/") + "/dicomweb"


def _receiver(app: FastAPI) -> StowReceiver:
    """The app's STOW receiver: the node's intake (spool, disk admission, limits, a database recorder), made on first
    use."""
    with _STATE_LOCK:
        receiver = getattr(app.state, "stow_receiver", None)
        if receiver is None:
            from dicom_node.intake import DiskAdmission, Intake, IntakeLimits, SpoolWriter
            from dicom_node.intake.journal import JournalStore
            from dicom_node.intake.spool import INCOMING_DIR
            from dicom_node.scp.handlers import utc_now
            from service.ingest import DatabaseRecorder

            settings = app.state.settings
            # No SpoolWriter.prepare(): it clears temporary files, and the node's process may be writing some now.
            make_private_dirs(settings.spool_dir / INCOMING_DIR)
            spool, recorder = SpoolWriter(settings.spool_dir), DatabaseRecorder(app.state.session_factory)
            # The same durable step as the DICOM node's: this process's own journal (replaying any a stopped
            # process left), one group-committed sync per instance.
            journal = JournalStore(spool, recorder).start()
            intake = Intake(
                spool, recorder,
                admission=DiskAdmission(settings.spool_dir, settings.spool_high_water_percent,
                                        settings.spool_reserve_bytes),
                limits=IntakeLimits(settings.dicom_max_instance_bytes,
                                    settings.dicom_max_inflated_bytes),
                clock=utc_now, store=journal,
            )
            receiver = StowReceiver(intake, max_request_bytes=settings.stow_max_request_bytes)
            app.state.stow_receiver = receiver
            app.state.stow_requests = asyncio.Semaphore(settings.stow_max_concurrent_requests)
        return receiver


def _results(app: FastAPI) -> ResultInstances:
    """The app's view of the result objects (its header cache lives as long as the app)."""
    with _STATE_LOCK:
        results = getattr(app.state, "dicomweb_results", None)
        if results is None:
            results = ResultInstances(app.state.session_factory, app.state.settings.results_dir)
            app.state.dicomweb_results = results
        return results


# -- QIDO-RS ----------------------------------------------------------------------------------------------------------


def _search(request: Request, session, user, level: QidoLevel, limit: int, offset: int, study_uid: str | None = None,
            series_uid: str | None = None) -> JSONResponse:
    if not wants_json(request.headers.get("accept", "")):
        raise Problem(406, "not acceptable", f"search results are {DICOM_JSON}")
    try:
        query = parse_qido(list(request.query_params.multi_items()), level, limit=limit, offset=offset)
        fields = parse_includefield([v for k, v in request.query_params.multi_items() if k == "includefield"], level)
    except QidoError as exc:
        raise Problem(400, "unsupported query", str(exc)) from exc
    for keyword, value in (("StudyInstanceUID", study_uid), ("SeriesInstanceUID", series_uid)):
        if value is not None:
            asked = query.filters.get(keyword)
            query.filters[keyword] = [value] if asked is None or value in asked else []
    answerable = all(query.filters.values())
    results = search(session, query, _base(request), _results(request.app)) if answerable else []
    include_fields(session, results, level, fields)
    record_audit(session, user.name, "dicomweb.search", study_uid=study_uid or "", target=level.value,
                 remote_addr=client_address(request),
                 detail={"keys": sorted(query.filters), "matches": len(results), "offset": offset,
                         # which studies (and so whose patient context) the answer showed: UIDs, never the values
                         "studies": sorted({v for r in results for v in r.get("0020000D", {}).get("Value", [])})[:100],
                         "includefield": len(fields)})
    headers = {"Warning": ", ".join(query.warnings)} if query.warnings else None
    return JSONResponse(results, media_type=DICOM_JSON, headers=headers)


@router.get("/studies", summary="QIDO-RS: search for studies")
def search_studies(request: Request, user: CurrentUser, session: SessionDep, limit: Limit = 100,
                   offset: Offset = 0) -> JSONResponse:
    return _search(request, session, user, QidoLevel.STUDY, limit, offset)


@router.get("/series", summary="QIDO-RS: search for series")
def search_series(request: Request, user: CurrentUser, session: SessionDep, limit: Limit = 100,
                  offset: Offset = 0) -> JSONResponse:
    return _search(request, session, user, QidoLevel.SERIES, limit, offset)


@router.get("/instances", summary="QIDO-RS: search for instances")
def search_instances(request: Request, user: CurrentUser, session: SessionDep, limit: Limit = 100,
                     offset: Offset = 0) -> JSONResponse:
    return _search(request, session, user, QidoLevel.INSTANCE, limit, offset)


@router.get("/studies/{study_uid}/series", summary="QIDO-RS: search for series of a study")
def search_study_series(study_uid: StudyUid, request: Request, user: CurrentUser, session: SessionDep,
                        limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    return _search(request, session, user, QidoLevel.SERIES, limit, offset, study_uid)


@router.get("/studies/{study_uid}/instances", summary="QIDO-RS: search for instances of a study")
def search_study_instances(study_uid: StudyUid, request: Request, user: CurrentUser, session: SessionDep,
                           limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    return _search(request, session, user, QidoLevel.INSTANCE, limit, offset, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances", summary="QIDO-RS: search for instances of a series")
def search_series_instances(study_uid: StudyUid, series_uid: SeriesUid, request: Request, user: CurrentUser,
                            session: SessionDep, limit: Limit = 100, offset: Offset = 0) -> JSONResponse:
    return _search(request, session, user, QidoLevel.INSTANCE, limit, offset, study_uid, series_uid)


# -- WADO-RS ----------------------------------------------------------------------------------------------------------


def _files(request: Request, session, study_uid: str, series_uid: str | None, sop_uid: str | None):
    files = stored_files(session, request.app.state.settings.spool_dir, study_uid, series_uid, sop_uid)
    files += _results(request.app).files(study_uid, series_uid, sop_uid)
    missing = [f for f in files if not f.path.is_file()]
    if missing:  # checked before streaming starts: a half-sent multipart body cannot carry an error
        raise Problem(410, "gone", f"{len(missing)} instance(s) under this URL are no longer in the spool")
    if not files:
        raise Problem(404, "not found", "nothing held under this URL (search with QIDO-RS for what is)")
    return files


def _retrieve(request: Request, session, user, study_uid: str, series_uid: str | None = None,
              sop_uid: str | None = None) -> StreamingResponse:
    try:
        wanted = wanted_transfer_syntax(request.headers.get("accept", ""))
    except NotAcceptable as exc:
        raise Problem(406, "not acceptable", str(exc)) from exc
    files = _files(request, session, study_uid, series_uid, sop_uid)
    if wanted is not None and any(f.transfer_syntax_uid not in wanted for f in files):
        stored = sorted({f.transfer_syntax_uid for f in files})
        raise Problem(406, "not acceptable", f"instances are sent as stored ({', '.join(stored)}), never transcoded; "
                                             "ask for transfer-syntax=* or one of those")
    record_audit(session, user.name, "dicomweb.instance.read", study_uid=study_uid,
                 target=sop_uid or series_uid or "", remote_addr=client_address(request),
                 detail={"instances": len(files)})
    boundary = new_boundary()
    parts = [FilePart(f.path, f"application/dicom; transfer-syntax={f.transfer_syntax_uid}") for f in files]
    return StreamingResponse(encode_parts(parts, boundary),
                             media_type=f'multipart/related; type="application/dicom"; boundary={boundary}')


def _metadata(request: Request, session, user, study_uid: str, series_uid: str | None = None,
              sop_uid: str | None = None) -> Response:
    if not wants_json(request.headers.get("accept", "")):
        raise Problem(406, "not acceptable", f"metadata is {DICOM_JSON}")
    files = stored_files(session, request.app.state.settings.spool_dir, study_uid, series_uid, sop_uid,
                         with_metadata=True)
    files += _results(request.app).files(study_uid, series_uid, sop_uid)
    if not files:
        raise Problem(404, "not found", "nothing held under this URL (search with QIDO-RS for what is)")
    body = _metadata_documents(request.app).body(files, _base(request))
    record_audit(session, user.name, "dicomweb.metadata.read", study_uid=study_uid,
                 target=sop_uid or series_uid or "", remote_addr=client_address(request),
                 detail={"instances": len(files)})
    return Response(body, media_type=DICOM_JSON)


def _metadata_documents(app: FastAPI) -> MetadataDocuments:
    with _STATE_LOCK:
        documents = getattr(app.state, "dicomweb_metadata", None)
        if documents is None:
            documents = app.state.dicomweb_metadata = MetadataDocuments()
        return documents


def _one_file(request: Request, session, study_uid: str, series_uid: str, sop_uid: str):
    files = _files(request, session, study_uid, series_uid, sop_uid)
    return files[0]


def _frame_parts(request: Request, session, user, study_uid: str, series_uid: str, sop_uid: str, read, what: str,
                 event: str) -> Response:
    stored = _one_file(request, session, study_uid, series_uid, sop_uid)
    try:
        frames = read(stored.path)
    except FrameError as exc:
        raise Problem(exc.status, "not found" if exc.status == 404 else "bad request", str(exc)) from exc
    try:
        content_type = frame_content_type(request.headers.get("accept", ""), frames.transfer_syntax_uid,
                                          media_type_of(frames.transfer_syntax_uid) if frames.compressed
                                          else "application/octet-stream")
    except NotAcceptable as exc:
        raise Problem(406, "not acceptable", str(exc)) from exc
    record_audit(session, user.name, event, study_uid=study_uid, target=sop_uid, remote_addr=client_address(request),
                 detail={what: len(frames.parts)})
    boundary = new_boundary()
    part_type = content_type.split(";")[0]
    return Response(encode_bytes_parts(frames.parts, content_type, boundary),
                    media_type=f'multipart/related; type="{part_type}"; boundary={boundary}')


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/frames/{frame_list}",
            summary="WADO-RS: frames of one instance, as stored (never transcoded)",
            responses={200: {"content": {'multipart/related; type="application/octet-stream"': {}}}},
            response_class=Response)
def retrieve_frames(study_uid: StudyUid, series_uid: SeriesUid, sop_instance_uid: InstanceUid,
                    frame_list: Annotated[str, Path(pattern=r"^[0-9]+(,[0-9]+)*$", max_length=40_000)],
                    request: Request, user: CurrentUser, session: SessionDep):
    try:
        numbers = parse_frame_list(frame_list)
    except FrameError as exc:
        raise Problem(exc.status, "bad request", str(exc)) from exc
    return _frame_parts(request, session, user, study_uid, series_uid, sop_instance_uid,
                        lambda path: read_frames(path, numbers), "frames", "dicomweb.frames.read")


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/bulkdata/{tag}",
            summary="WADO-RS: one bulk data attribute of an instance (the BulkDataURI its metadata gives)",
            responses={200: {"content": {'multipart/related; type="application/octet-stream"': {}}}},
            response_class=Response)
def retrieve_bulk_data(study_uid: StudyUid, series_uid: SeriesUid, sop_instance_uid: InstanceUid,
                       tag: Annotated[str, Path(pattern=r"^[0-9A-Fa-f]{8}$")], request: Request, user: CurrentUser,
                       session: SessionDep):
    return _frame_parts(request, session, user, study_uid, series_uid, sop_instance_uid,
                        lambda path: read_bulk_data(path, int(tag, 16)), "parts", "dicomweb.bulkdata.read")


_DICOM_PARTS = {200: {"content": {'multipart/related; type="application/dicom"': {}}}}


@router.get("/studies/{study_uid}", summary="WADO-RS: every instance of a study", responses=_DICOM_PARTS,
            response_class=StreamingResponse)
def retrieve_study(study_uid: StudyUid, request: Request, user: CurrentUser, session: SessionDep):
    return _retrieve(request, session, user, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}", summary="WADO-RS: every instance of a series",
            responses=_DICOM_PARTS, response_class=StreamingResponse)
def retrieve_series(study_uid: StudyUid, series_uid: SeriesUid, request: Request, user: CurrentUser,
                    session: SessionDep):
    return _retrieve(request, session, user, study_uid, series_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}",
            summary="WADO-RS: one instance, byte for byte as stored", responses=_DICOM_PARTS,
            response_class=StreamingResponse)
def retrieve_instance(study_uid: StudyUid, series_uid: SeriesUid, sop_instance_uid: InstanceUid, request: Request,
                      user: CurrentUser, session: SessionDep):
    return _retrieve(request, session, user, study_uid, series_uid, sop_instance_uid)


@router.get("/studies/{study_uid}/metadata", summary="WADO-RS: metadata of every instance of a study")
def study_metadata(study_uid: StudyUid, request: Request, user: CurrentUser, session: SessionDep) -> Response:
    return _metadata(request, session, user, study_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/metadata", summary="WADO-RS: metadata of a series")
def series_metadata(study_uid: StudyUid, series_uid: SeriesUid, request: Request, user: CurrentUser,
                    session: SessionDep) -> Response:
    return _metadata(request, session, user, study_uid, series_uid)


@router.get("/studies/{study_uid}/series/{series_uid}/instances/{sop_instance_uid}/metadata",
            summary="WADO-RS: metadata of one instance")
def instance_metadata(study_uid: StudyUid, series_uid: SeriesUid, sop_instance_uid: InstanceUid, request: Request,
                      user: CurrentUser, session: SessionDep) -> Response:
    return _metadata(request, session, user, study_uid, series_uid, sop_instance_uid)


# -- STOW-RS ----------------------------------------------------------------------------------------------------------


def _pulled(stream: AsyncIterator[bytes]) -> Iterator[bytes]:
    """The request body's chunks, pulled from the event loop by the worker thread that stores them, one at a time."""
    while True:
        try:
            yield anyio.from_thread.run(stream.__anext__)
        except StopAsyncIteration:
            return


async def _stow(request: Request, session, user, study_uid: str | None) -> JSONResponse:
    media_type, parameters = media_type_parameters(request.headers.get("content-type", ""))
    if media_type != "multipart/related" or parameters.get("type", "").lower() != "application/dicom":
        raise Problem(415, "unsupported media type",
                      'send DICOM Part 10 files as multipart/related; type="application/dicom"')
    receiver = _receiver(request.app)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > receiver.max_request_bytes:
        raise Problem(413, "request too large", f"send at most {receiver.max_request_bytes} bytes per request "
                                                "(STOW_MAX_REQUEST_BYTES); larger studies go in several requests")
    full = receiver.intake.admission_refusal()
    if full is not None:
        LOGGER.warning("STOW-RS request refused: %s", full)
        raise Problem(503, "spool full", "the node is not taking instances in now (its spool's disk is too full); "
                      "retry later", headers={"Retry-After": str(STOW_RETRY_AFTER_SECONDS * 12)})
    requests = request.app.state.stow_requests
    if requests.locked():
        raise Problem(503, "busy", "as many STOW-RS requests as STOW_MAX_CONCURRENT_REQUESTS are being stored; "
                      "retry shortly", headers={"Retry-After": str(STOW_RETRY_AFTER_SECONDS)})
    async with requests:
        try:
            result = await run_in_threadpool(receiver.store, _pulled(request.stream()),
                                             parameters.get("boundary", ""), study_uid)
        except StowRefused as exc:
            record_audit(session, user.name, "dicomweb.store", study_uid=study_uid or "",
                         remote_addr=client_address(request), outcome="failed",
                         detail={"refused": exc.http_status, "stored_before": exc.stored})
            session.commit()  # the request fails: its audit event must not be rolled back with it
            raise Problem(exc.http_status, exc.title, exc.detail
                          + (f" ({exc.stored} instance(s) before it were stored)" if exc.stored else "")) from exc
    by_study: dict[str, int] = {}
    for stored in result.stored:
        by_study[stored.study_uid] = by_study.get(stored.study_uid, 0) + 1
    for uid, count in sorted(by_study.items()) or [(study_uid or "", 0)]:
        record_audit(session, user.name, "dicomweb.store", study_uid=uid, remote_addr=client_address(request),
                     outcome="success" if count else "failed",
                     detail={"stored": count, "failed": len(result.failed),
                             "failure_reasons": sorted({f"0x{f.reason:04X}" for f in result.failed})})
    return JSONResponse(result.to_json(_base(request), study_uid), status_code=result.http_status,
                        media_type=DICOM_JSON)


@router.post("/studies", summary="STOW-RS: store instances (through the same durable path as C-STORE)")
async def store_instances(request: Request, user: CurrentUser, session: SessionDep) -> JSONResponse:
    return await _stow(request, session, user, None)


@router.post("/studies/{study_uid}", summary="STOW-RS: store instances of one study")
async def store_study_instances(study_uid: StudyUid, request: Request, user: CurrentUser,
                                session: SessionDep) -> JSONResponse:
    return await _stow(request, session, user, study_uid)
