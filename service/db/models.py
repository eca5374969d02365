"""The service's tables: what arrived (studies, series, instances) and where each study stands."""

from __future__ import annotations

import enum
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

__all__ = [
    "ApiToken",
    "AuditEvent",
    "Base",
    "DashboardSession",
    "LoginAttempt",
    "SessionEnd",
    "Role",
    "User",
    "Delivery",
    "Instance",
    "MetricCounter",
    "PipelineRun",
    "Report",
    "ReportStatus",
    "RunStatus",
    "Series",
    "StageRun",
    "StageStatus",
    "Study",
    "StudyStatus",
    "UidCollision",
    "UidKind",
    "utcnow",
]

UID = String(64)


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class StudyStatus(str, enum.Enum):
    RECEIVING = "receiving"  # instances are arriving; the assembler watches it
    COMPLETE = "complete"  # assembly finished; waiting to be picked up by the pipeline
    QUEUED = "queued"
    PROCESSING = "processing"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class Study(Base):
    __tablename__ = "studies"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_uid: Mapped[str] = mapped_column(UID, unique=True)
    status: Mapped[StudyStatus] = mapped_column(
        Enum(StudyStatus, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e]),
        default=StudyStatus.RECEIVING,
        index=True,
    )
    # Descriptive attributes, from the first instance that carries each one.
    modalities: Mapped[str] = mapped_column(String(64), default="")
    study_description: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    # Patient context (migration 0009) for the people who review the study: shown to signed-in users only, every read
    # audited, never logged. NULL: the study arrived before it was kept (nothing known); "" : the instances had none.
    patient_name: Mapped[str | None] = mapped_column(String(200), nullable=True)
    patient_id: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    accession_number: Mapped[str | None] = mapped_column(String(16), nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    # When the current receiving period began: the first instance, or the instance that re-opened a completed study.
    opened_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_released_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Associations (and STOW-RS requests) that stored into the study and have not ended yet: while any is open, a
    # release does not complete the study (the idle timer and the cap still do). Reset when the node starts.
    open_associations: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    completed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    completion_reason: Mapped[str] = mapped_column(String(32), default="")
    completion_count: Mapped[int] = mapped_column(Integer, default=0)
    reprocess_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str] = mapped_column(Text, default="")

    series: Mapped[list[Series]] = relationship(back_populates="study", cascade="all, delete-orphan")


class Series(Base):
    """A series of one study: identity is (study, Series Instance UID), never the UID alone (PS3.3 says a series UID
    is unique, real senders reuse them: a second study with the same UID gets its own row and a ``UidCollision``)."""

    __tablename__ = "series"
    __table_args__ = (
        UniqueConstraint("study_id", "series_uid", name="uq_series_study_series_uid"),
        Index("ix_series_series_uid", "series_uid"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    series_uid: Mapped[str] = mapped_column(UID)
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    body_part_examined: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series", cascade="all, delete-orphan")


class Instance(Base):
    __tablename__ = "instances"
    __table_args__ = (
        Index("ix_instances_sop_uid", "sop_instance_uid"),
        # the rows whose metadata the keeper has still to keep (a partial index: stays small whatever the catalogue)
        Index("ix_instances_metadata_waiting", "id", sqlite_where=text("dicom_json IS NULL"),
              postgresql_where=text("dicom_json IS NULL")),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512), unique=True)  # relative to the spool
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    digest: Mapped[str] = mapped_column(String(64))  # SHA-256 of the stored file
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # True for a second copy of an SOP Instance UID whose content differs from the first one kept.
    conflict: Mapped[bool] = mapped_column(Boolean, default=False)
    # True for an instance whose Patient ID differs from its study's (a Study Instance UID reused by another patient):
    # kept and flagged, never served with the study (QIDO, WADO) nor processed (migration 0009).
    other_patient: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    # WADO-RS metadata (DICOM JSON, zlib) kept once the study is quiet (service.dicomweb.metadata_keeper); None: not
    # kept yet, empty: unreadable (both read from the file when asked). ix_instances_metadata_waiting finds the former.
    dicom_json: Mapped[bytes | None] = mapped_column(LargeBinary, nullable=True, default=None, deferred=True)

    series: Mapped[Series] = relationship(back_populates="instances")


class UidKind(str, enum.Enum):
    SERIES = "series"  # a Series Instance UID
    INSTANCE = "instance"  # a SOP Instance UID
    STUDY = "study"  # a Study Instance UID that arrived with a second Patient ID (study_id == other_study_id)


class UidCollision(Base):
    """A Series or SOP Instance UID that arrived in ``study`` after it had been stored in ``other_study``.

    Each copy stays under its own study (its own series row, spool folder and runs); this row is the flag that the
    study pages, the log and the ``m3edge_uid_collisions`` metric show. Never merged, never resolved automatically."""

    __tablename__ = "uid_collisions"
    __table_args__ = (UniqueConstraint("kind", "uid", "study_id", "other_study_id", name="uq_uid_collisions"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[UidKind] = mapped_column(
        Enum(UidKind, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])
    )
    uid: Mapped[str] = mapped_column(UID)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    other_study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    detected_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class RunStatus(str, enum.Enum):
    PENDING = "pending"  # created; its first stage waits to be (re-)enqueued: this row is the outbox
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"


class StageStatus(str, enum.Enum):
    PENDING = "pending"  # to be enqueued (again) by the dispatcher or the sweeper
    QUEUED = "queued"  # a message is with the broker
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    NOT_RUN = "not_run"  # its run ended (failed, skipped) before it: it never will run


def _enum(cls: type[enum.Enum]) -> Enum:
    return Enum(cls, native_enum=False, length=16, values_callable=lambda e: [m.value for m in e])


class PipelineRun(Base):
    """One pass of a study through the pipeline; a reprocess or a re-opened study makes a new run."""

    __tablename__ = "pipeline_runs"
    __table_args__ = (UniqueConstraint("study_id", "run_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    run_number: Mapped[int] = mapped_column(Integer)
    trigger: Mapped[str] = mapped_column(String(16))  # complete | reprocess
    status: Mapped[RunStatus] = mapped_column(_enum(RunStatus), default=RunStatus.PENDING, index=True)
    priority: Mapped[str] = mapped_column(String(8), default="routine")
    route: Mapped[dict] = mapped_column(JSON, default=dict)  # the plan stage's decision
    error: Mapped[str] = mapped_column(Text, default="")
    error_stage: Mapped[str] = mapped_column(String(16), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    study: Mapped[Study] = relationship()
    stages: Mapped[list[StageRun]] = relationship(back_populates="run", cascade="all, delete-orphan")


class StageRun(Base):
    """One stage of one run: the idempotency key is (run, stage); its result is what later stages read."""

    __tablename__ = "stage_runs"
    __table_args__ = (UniqueConstraint("run_id", "stage"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"), index=True)
    stage: Mapped[str] = mapped_column(String(16))
    status: Mapped[StageStatus] = mapped_column(_enum(StageStatus), default=StageStatus.PENDING, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    queued_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # A transient failure's back-off: no message runs the stage before then (the last one set is kept).
    retry_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    worker: Mapped[str] = mapped_column(String(128), default="")
    error: Mapped[str] = mapped_column(Text, default="")
    result: Mapped[dict] = mapped_column(JSON, default=dict)

    run: Mapped[PipelineRun] = relationship(back_populates="stages")


class MetricCounter(Base):
    """A cumulative figure for ``/metrics`` (a stage's seconds and count, runs failed by stage, deliveries failed by
    destination), added to in the transaction that records what it counts: a scrape reads these few rows, never the
    history they sum up."""

    __tablename__ = "metric_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    label: Mapped[str] = mapped_column(String(128), primary_key=True)  # the one label's value ("" for none)
    value: Mapped[float] = mapped_column(Float, default=0.0)


class Delivery(Base):
    """One object (SR, SEG, SC) to one destination; survives restarts so delivery resumes."""

    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("run_id", "destination", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(128))
    sop_instance_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(String(512))
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | delivered | failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Role(str, enum.Enum):
    ADMIN = "admin"  # also manages destinations, routing rules, users; reads the audit log
    REVIEWER = "reviewer"  # reads studies and reviews reports


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[Role] = mapped_column(_enum(Role))
    display_name: Mapped[str] = mapped_column(String(128), default="")  # the verifying observer's name in a signed SR
    organisation: Mapped[str] = mapped_column(String(128), default="")
    password_hash: Mapped[str] = mapped_column(String(256), default="")  # scrypt; empty = no dashboard login
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    tokens: Mapped[list[ApiToken]] = relationship(back_populates="user", cascade="all, delete-orphan")


class ApiToken(Base):
    """A bearer token, stored as its SHA-256 (tokens are 256-bit random, so a fast hash is enough)."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    label: Mapped[str] = mapped_column(String(64), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)

    user: Mapped[User] = relationship(back_populates="tokens")


class SessionEnd(str, enum.Enum):
    """Why a dashboard session ended before its time."""

    LOGOUT = "logout"
    DISABLED = "disabled"  # its user was disabled
    PASSWORD = "password"  # its user's password was changed


class DashboardSession(Base):
    """A dashboard log-in. The cookie carries a random id, kept here only as its SHA-256; every request checks the row
    (ended, idle too long, past its lifetime, user disabled), so a session ends for every copy of its cookie at once."""

    __tablename__ = "dashboard_sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    end_reason: Mapped[SessionEnd | None] = mapped_column(_enum(SessionEnd), nullable=True)
    remote_addr: Mapped[str] = mapped_column(String(64), default="")


class LoginAttempt(Base):
    """One dashboard log-in attempt, written (and committed) before its password is checked, so that concurrent
    attempts see each other and the failure limit holds under concurrency (see ``service.security.login_limits``)."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    name: Mapped[str] = mapped_column(String(64), index=True)
    remote_addr: Mapped[str] = mapped_column(String(64), index=True)
    outcome: Mapped[str] = mapped_column(String(16))  # service.security.login_limits.LoginOutcome


class AuditEvent(Base):
    """Who did what to which study, when, from where. Append-only: the database refuses UPDATE and DELETE."""

    __tablename__ = "audit_events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    actor: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(64), index=True)
    study_uid: Mapped[str] = mapped_column(UID, default="", index=True)
    target: Mapped[str] = mapped_column(String(256), default="")
    outcome: Mapped[str] = mapped_column(String(16), default="success")
    remote_addr: Mapped[str] = mapped_column(String(64), default="")
    detail: Mapped[dict] = mapped_column(JSON, default=dict)


class ReportStatus(str, enum.Enum):
    DRAFT = "draft"  # the AI draft (UNVERIFIED, PARTIAL) is in PACS, waiting for a reader
    APPROVED = "approved"
    AMENDED = "amended"
    REJECTED = "rejected"
    SUPERSEDED = "superseded"  # a later run replaced it


class Report(Base):
    """The result of one run: the draft SR and what it was made from, and then its review."""

    __tablename__ = "reports"
    __table_args__ = (UniqueConstraint("run_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id", ondelete="CASCADE"), index=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("pipeline_runs.id", ondelete="CASCADE"))
    status: Mapped[ReportStatus] = mapped_column(_enum(ReportStatus), default=ReportStatus.DRAFT, index=True)
    version: Mapped[int] = mapped_column(Integer, default=1)  # optimistic lock: a review must name the version it read
    demo: Mapped[bool] = mapped_column(Boolean, default=False)
    question: Mapped[str] = mapped_column(Text, default="")
    narrative: Mapped[str] = mapped_column(Text, default="")
    findings: Mapped[dict] = mapped_column(JSON, default=dict)  # expert findings (volumes, scores, labels)
    transcript: Mapped[dict] = mapped_column(JSON, default=dict)  # the agent's full transcript
    objects: Mapped[dict] = mapped_column(JSON, default=dict)  # kind -> {path, sop_instance_uid, sop_class_uid}
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    reviewed_by: Mapped[str] = mapped_column(String(64), default="")
    reviewed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    review_comment: Mapped[str] = mapped_column(Text, default="")
