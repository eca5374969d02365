"""The one settings object of m3edge.

Built once by the command line (``Settings.load()``) and passed down; nothing reads it from a global.
Sources, highest first: keyword arguments, ``M3EDGE_*`` environment variables, the YAML file named by
``M3EDGE_CONFIG``, the defaults below.
"""

from __future__ import annotations

import enum
import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from dicom_node.compression import SegCompression
from dicom_node.network import AllowedCaller, DicomAddress

__all__ = ["Settings", "VlmBackend", "PredictorBackend", "VlmDtype", "VlmPromptMode", "PlaceholderForm", "SlicePolicy",
           "BratsImages", "RejectAction", "CookieSecurity", "ConfigurationError", "default_receivers"]


def default_receivers() -> int:
    """``DICOM_RECEIVERS=auto``: one receiving process per CPU core this process may run on, at most 4 (beyond that
    the syncs of the spool and the database, not the CPU, set the pace)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, 4))


class ConfigurationError(ValueError):
    """A setting is missing or unsafe; the message names it and what to do."""


class VlmBackend(str, enum.Enum):
    VILA = "vila"
    OPENAI = "openai"


class CookieSecurity(str, enum.Enum):
    """``SESSION_COOKIE_SECURE``: when the dashboard's cookies are marked ``Secure`` (sent over HTTPS only)."""

    AUTO = "auto"  # when the request came over HTTPS: uvicorn's own TLS, or X-Forwarded-Proto from a trusted proxy
    ALWAYS = "always"  # behind a TLS proxy that does not send X-Forwarded-Proto (the dashboard needs HTTPS then)


class VlmDtype(enum.StrEnum):
    """``VLM_DTYPE``: the in-process model's weights and activations (``auto``: bfloat16 on a GPU that has it)."""

    AUTO = "auto"
    FLOAT16 = "float16"
    BFLOAT16 = "bfloat16"
    FLOAT32 = "float32"


class VlmPromptMode(enum.StrEnum):
    """``VLM_PROMPT_MODE`` of the ``openai`` backend: our templated prompt, or the server's chat template."""

    TEMPLATED = "templated"
    CHAT = "chat"


class PlaceholderForm(enum.StrEnum):
    """``VLM_PLACEHOLDER_FORM``: user turns' ``<image>`` as VILA-M3 was trained, or as its JSON/eval scripts wrote it."""

    TRAINING = "training"
    RAW = "raw"


class SlicePolicy(enum.StrEnum):
    """``AGENT_SLICE_POLICY``: which axial slice the model sees."""

    MIDDLE = "middle"
    MOST_STRUCTURE = "most_structure"


class BratsImages(enum.StrEnum):
    """``AGENT_BRATS_IMAGES``: the T1c slice four times (as trained), or the slice of each of the four sequences."""

    AS_TRAINED = "as_trained"
    SEQUENCES = "sequences"


class RejectAction(enum.StrEnum):
    """``REJECT_ACTION``: what a rejected draft sends: nothing, or an IOCM rejection note with this reason."""

    NONE = "none"
    QUALITY = "quality"
    PATIENT_SAFETY = "patient_safety"


class PredictorBackend(str, enum.Enum):
    AUTO = "auto"
    TENSORRT = "tensorrt"
    TORCH = "torch"
    ONNXRUNTIME = "onnxruntime"


def _split_list(value: Any) -> Any:
    """Accept ``"a, b"`` (environment style) as well as a YAML list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class TlsSettings(BaseModel):
    certificate: Path
    private_key: Path
    ca_certificates: Path | None = None
    require_client_certificate: bool = False


class StageTimeLimitSetting(BaseModel):
    """One stage's limits in seconds; either may be left out (the default hard limit; a soft one that follows it)."""

    model_config = {"extra": "forbid"}

    soft: float | None = Field(None, gt=0)
    hard: float | None = Field(None, gt=0)


class Settings(BaseSettings):
    """Everything an operator can set. Environment names are the field names upper-cased with ``M3EDGE_``."""

    model_config = SettingsConfigDict(env_prefix="M3EDGE_", extra="forbid", env_nested_delimiter="__")

    home: Path = Field(Path("./var"), description="Spool, database, models and engines live here.")
    database_url: str | None = Field(None, description="SQLAlchemy URL; SQLite in HOME when unset.")
    broker_url: str | None = Field(None, description="Celery broker; a file-based broker in HOME when unset.")

    dicom_ae_title: str = "M3EDGE"
    dicom_host: str = Field("0.0.0.0", description="Address the DICOM node listens on.")
    dicom_port: int = Field(11112, ge=0, le=65535)
    dicom_allowed_aes: Annotated[list[AllowedCaller], NoDecode] = Field(
        default_factory=list,
        description="Calling AE titles allowed to associate, each optionally bound to an address (AE@host). "
        "Empty: only loopback callers are accepted.",
    )
    dicom_require_called_ae: bool = Field(
        True, description="Refuse an association whose called AE title is not DICOM_AE_TITLE (false: accept any)."
    )
    dicom_max_associations: int = Field(16, ge=1, description="Established associations per receiving process.")
    dicom_max_pdu_size: int = Field(
        1_048_576, ge=4096, le=64 << 20,
        description="Largest P-DATA PDU we accept (what we tell peers); a longer one is answered with an A-ABORT.",
    )
    dicom_associate_timeout_seconds: float = Field(
        5.0, gt=0, le=300,
        description="A connection must complete its A-ASSOCIATE-RQ (and TLS handshake) this soon after it opens.",
    )
    dicom_max_instance_bytes: int = Field(
        1 << 30, ge=1 << 20,
        description="Largest data set received (C-STORE: the association is aborted; STOW-RS: 413).",
    )
    dicom_max_inflated_bytes: int = Field(
        512 << 20, ge=1 << 20,
        description="Largest size a deflated data set may inflate to (C-STORE: Out of Resources; STOW-RS: 413).",
    )
    dicom_fast_path: bool = Field(
        False, description="Pace pynetdicom's reactors on busy associations (dicom_node/scp/fastpath.py) where the "
                           "installed pynetdicom is a version it was tested with; off by default: it did not clearly "
                           "show the 20% a fast path must (dicom_node/scp/node.py).",
    )
    dicom_tls: TlsSettings | None = None
    dicom_receivers: int = Field(
        default_factory=default_receivers, ge=1, le=64,
        description="Receiving processes sharing the DICOM port; 'auto' (the default): one per CPU core, at most 4.",
    )

    spool_high_water_percent: float = Field(
        95.0, gt=0, le=100, description="Refuse new associations when the spool's disk is fuller than this."
    )
    spool_reserve_bytes: int = Field(
        1 << 30, ge=0, description="Refuse new associations when less than this is free on the spool's disk."
    )

    study_idle_seconds: float = Field(30.0, gt=0)
    study_release_grace_seconds: float = Field(5.0, ge=0)
    study_max_open_seconds: float = Field(3600.0, gt=0, description="Force completion of a study that keeps trickling.")

    stow_max_request_bytes: int = Field(2 << 30, ge=1 << 20, description="Largest STOW-RS request body (413 beyond).")
    stow_max_concurrent_requests: int = Field(
        4, ge=1, le=256, description="STOW-RS requests stored at once per API process (503 beyond, with Retry-After).",
    )

    api_host: str = "127.0.0.1"
    api_port: int = Field(8000, ge=0, le=65535)
    api_tls: TlsSettings | None = Field(None, description="Serve the API over HTTPS with this certificate and key.")
    api_trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Addresses or networks of the reverse proxies whose X-Forwarded-For and X-Forwarded-Proto are "
        "believed; empty (the default): nobody's, the client is the peer of the connection.",
    )
    session_idle_seconds: float = Field(1800.0, gt=0, description="A dashboard session unused this long ends.")
    session_lifetime_seconds: float = Field(28800.0, gt=0, description="A dashboard session ends this long after log-in.")
    session_cookie_secure: CookieSecurity = Field(
        CookieSecurity.AUTO, description="auto: Secure cookies for HTTPS requests; always: Secure cookies whatever the "
        "request (behind a TLS proxy that does not send X-Forwarded-Proto).",
    )

    destinations: Annotated[list[DicomAddress], NoDecode] = Field(default_factory=list)
    routing_rules: Path | None = None
    vlm_backend: VlmBackend = VlmBackend.VILA
    vlm_url: str | None = None
    vlm_model_dir: Path | None = Field(None, description="VILA-M3 checkpoint folder; default: the one in HOME/models.")
    vlm_checkpoint: str = Field("Llama3-VILA-M3-8B", description="Which published checkpoint (chooses the template).")
    vlm_template: str | None = Field(None, description="llama_3, vicuna_v1 or hermes-2; default from VLM_CHECKPOINT.")
    vlm_dtype: VlmDtype = VlmDtype.AUTO
    vlm_device: str = "auto"
    vlm_projector_order: str = Field("vila-355fda9", description="Token order of mlp_downsample (see the README).")
    vlm_prompt_mode: VlmPromptMode = VlmPromptMode.TEMPLATED
    vlm_served_model: str | None = None
    vlm_api_key: SecretStr | None = None
    vlm_max_new_tokens: int = Field(1024, ge=1, le=8192)
    vlm_min_new_tokens: int = Field(2, ge=0)
    vlm_timeout_seconds: float = Field(300.0, gt=0)
    vlm_placeholder_form: PlaceholderForm = Field(
        PlaceholderForm.TRAINING,
        description="User turns with <image> as VILA-M3 was trained (training) or as the JSON/eval scripts wrote them (raw).",
    )
    agent_slice_policy: SlicePolicy = SlicePolicy.MOST_STRUCTURE
    agent_brats_images: BratsImages = Field(
        BratsImages.AS_TRAINED,
        description="BraTS first turn: the T1c slice four times as trained, or the slice of each of the four sequences.",
    )
    expert_timeout_seconds: float = Field(900.0, gt=0)
    predictor_backend: PredictorBackend = PredictorBackend.AUTO
    demo_models_when_empty: bool = Field(
        True, description="`m3edge serve` writes the DEMO models (random weights) when HOME/models is empty."
    )

    uid_root: str = Field(
        "1.2.826.0.1.3680043.8.498",
        pattern=r"^[0-9]+(\.[0-9]+)*$",
        max_length=40,
        description="Organisation root of every UID m3edge makes (set your own; the default is pydicom's).",
    )
    viewer_dir: Path | None = Field(
        None, description="The OHIF Viewer served at /viewer/ (its dist/ folder); default: where scripts/install "
                          "put it (vendor/ohif in the installed tree).")
    viewer_url_template: str = Field(
        "", max_length=2000,
        description="A site's own viewer: a URL with {study_uid} (and optionally {series_uid}, the first image "
                    "series) that the study page links to beside m3edge's viewer; empty: none.")
    overlay_secondary_capture: bool = Field(True, description="Also send the overlay image as a Secondary Capture.")
    seg_compression: SegCompression = Field(
        SegCompression.JPEG2000_LOSSLESS,
        description="SEG frames: jpeg2000-lossless (JPEG 2000 Lossless, the default), or none (uncompressed, for "
                    "old viewers that cannot decode JPEG 2000).")
    reject_action: RejectAction = Field(RejectAction.NONE, description="What a rejected draft sends: nothing, or an IOCM rejection note.")

    worker_cpu_threads: int = Field(
        0, ge=0, le=1024,
        description="CPU threads of each worker's model runtimes (torch, ONNX Runtime); 0: theirs, one per core.",
    )
    pipeline_sweep_seconds: float = Field(
        10.0, gt=0, description="How often the sweeper queues completed studies and re-sends stalled pipeline stages."
    )

    stage_time_limits: dict[str, StageTimeLimitSetting] = Field(
        default_factory=dict,
        description="Per stage (plan, prepare, expert, vlm, report, deliver): seconds until the stage is interrupted "
        "(soft) and until its worker is ended and restarted (hard), e.g. {expert: {hard: 3600}}; defaults: README.",
    )

    log_json: bool = False
    log_level: str = "INFO"

    # -- validation -----------------------------------------------------------------------------------------------

    @field_validator("viewer_url_template")
    @classmethod
    def _check_viewer_url_template(cls, value: str) -> str:
        if not value:
            return value
        if "{study_uid}" not in value:
            raise ValueError("VIEWER_URL_TEMPLATE must hold {study_uid}, e.g. "
                             "https://pacs.example/viewer?study={study_uid}")
        if not (value.startswith(("https://", "http://")) or (value.startswith("/") and not value.startswith("//"))):
            raise ValueError("VIEWER_URL_TEMPLATE must be an http(s) URL or a path of this site (starting with one /)")
        try:
            value.format(study_uid="1.2", series_uid="1.2")
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"VIEWER_URL_TEMPLATE may use only {{study_uid}} and {{series_uid}} ({exc})") from exc
        return value

    @field_validator("dicom_allowed_aes", mode="before")
    @classmethod
    def _parse_allowed(cls, value: Any) -> Any:
        value = _split_list(value)
        return [AllowedCaller.parse(v) if isinstance(v, str) else v for v in value]

    @field_validator("api_trusted_proxies", mode="before")
    @classmethod
    def _parse_trusted_proxies(cls, value: Any) -> Any:
        value = _split_list(value)
        if isinstance(value, list):
            for entry in value:
                try:
                    ipaddress.ip_network(str(entry), strict=False)
                except ValueError as exc:
                    raise ValueError(f"API_TRUSTED_PROXIES: {entry!r} is not an IP address or network "
                                     "(e.g. 10.0.0.5 or 10.0.0.0/24)") from exc
        return value

    @field_validator("destinations", mode="before")
    @classmethod
    def _parse_destinations(cls, value: Any) -> Any:
        value = _split_list(value)
        return [DicomAddress.parse(v) if isinstance(v, str) else v for v in value]

    @field_validator("dicom_receivers", mode="before")
    @classmethod
    def _auto_receivers(cls, value: Any) -> Any:
        if isinstance(value, str):
            text = value.strip().lower()
            if text == "auto":
                return default_receivers()
            if not text.lstrip("-").isdigit():
                raise ValueError(f"{value!r} is neither a number of processes (1-64) nor 'auto'")
        return value

    @field_validator("dicom_ae_title")
    @classmethod
    def _check_ae_title(cls, value: str) -> str:
        from dicom_node.network import validate_ae_title

        return validate_ae_title(value)

    @field_validator("api_host", "dicom_host")
    @classmethod
    def _check_host(cls, value: str) -> str:
        if value != "localhost":
            try:
                ipaddress.ip_address(value)
            except ValueError as exc:
                raise ValueError(f"{value!r} is not an IP address (use 0.0.0.0 for every interface)") from exc
        return value

    @model_validator(mode="after")
    def _check_vlm(self) -> Settings:
        if self.vlm_backend is VlmBackend.OPENAI and not self.vlm_url:
            raise ValueError("VLM_BACKEND=openai needs M3EDGE_VLM_URL (the trtllm-serve address, e.g. http://gpu1:8000/v1)")
        return self

    # -- derived locations ----------------------------------------------------------------------------------------

    @property
    def spool_dir(self) -> Path:
        return self.home / "spool"

    @property
    def dicom_status_file(self) -> Path:
        """Where the DICOM node publishes whether it accepts (read by /readyz, doctor and the metrics)."""
        return self.home / "run" / "dicom-node.json"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def engines_dir(self) -> Path:
        return self.home / "engines"

    @property
    def results_dir(self) -> Path:
        return self.home / "results"

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'm3edge.db').resolve()}"

    @property
    def effective_broker_url(self) -> str:
        """The broker URL as configured; the embedded broker is a SQLite file in HOME (see service.pipeline)."""
        return self.broker_url or f"sqlite:///{(self.home / 'broker.db').resolve()}"

    @property
    def is_embedded(self) -> bool:
        """True when no outside service is configured (SQLite, file-backed broker)."""
        return self.database_url is None and self.broker_url is None

    # -- sources --------------------------------------------------------------------------------------------------

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("M3EDGE_CONFIG")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        sources.append(file_secret_settings)
        return tuple(sources)

    @classmethod
    def load(cls, **overrides: Any) -> Settings:
        """Build the settings from the environment and ``M3EDGE_CONFIG``; raise ``ConfigurationError`` with the cause."""
        config_file = os.environ.get("M3EDGE_CONFIG")
        if config_file and not Path(config_file).is_file():
            raise ConfigurationError(f"M3EDGE_CONFIG names {config_file!r}, which is not a readable file")
        try:
            return cls(**overrides)
        except ValueError as exc:
            raise ConfigurationError(str(exc)) from exc
