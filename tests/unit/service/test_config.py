from pathlib import Path

import pytest

from dicom_node.network import AllowedCaller, DicomAddress
from service.config import ConfigurationError, PredictorBackend, Settings, VlmBackend, default_receivers


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for key in list(__import__("os").environ):
        if key.startswith("M3EDGE_"):
            monkeypatch.delenv(key)


def test_defaults_are_the_embedded_mode():
    settings = Settings.load()
    assert settings.home == Path("./var")
    assert settings.dicom_ae_title == "M3EDGE"
    assert settings.dicom_port == 11112
    assert settings.api_host == "127.0.0.1" and settings.api_port == 8000
    assert settings.dicom_allowed_aes == []
    assert settings.is_embedded
    assert settings.effective_database_url.startswith("sqlite:///") and settings.effective_database_url.endswith("var/m3edge.db")
    assert settings.vlm_backend is VlmBackend.VILA
    assert settings.predictor_backend is PredictorBackend.AUTO
    assert settings.worker_cpu_threads == 0  # the model runtimes' own default
    assert settings.dicom_fast_path is False  # measured below the 20% a fast path must show (dicom_node/scp/node.py)


def test_the_dicom_fast_path_is_one_setting_away(monkeypatch):
    monkeypatch.setenv("M3EDGE_DICOM_FAST_PATH", "true")
    assert Settings.load().dicom_fast_path is True


@pytest.mark.parametrize(("cores", "expected"), [(1, 1), (2, 2), (3, 3), (16, 4)])
def test_dicom_receivers_default_to_one_per_core_at_most_four(monkeypatch, cores, expected):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cores)))
    assert default_receivers() == expected
    assert Settings.load().dicom_receivers == expected
    monkeypatch.setenv("M3EDGE_DICOM_RECEIVERS", "auto")
    assert Settings.load().dicom_receivers == expected
    monkeypatch.setenv("M3EDGE_DICOM_RECEIVERS", "6")
    assert Settings.load().dicom_receivers == 6


def test_dicom_receivers_must_be_a_count_or_auto(monkeypatch):
    for value in ("0", "many"):
        monkeypatch.setenv("M3EDGE_DICOM_RECEIVERS", value)
        with pytest.raises(ConfigurationError, match="dicom_receivers"):
            Settings.load()
    monkeypatch.setenv("M3EDGE_DICOM_RECEIVERS", "many")
    with pytest.raises(ConfigurationError, match="'auto'"):
        Settings.load()


def test_environment_lists_are_comma_separated(monkeypatch):
    monkeypatch.setenv("M3EDGE_DESTINATIONS", "PACS@10.0.0.5:104, ARCHIVE@archive.local:11112")
    monkeypatch.setenv("M3EDGE_DICOM_ALLOWED_AES", "ORTHANC@127.0.0.1,MODALITY")
    settings = Settings.load()
    assert settings.destinations == [DicomAddress("PACS", "10.0.0.5", 104), DicomAddress("ARCHIVE", "archive.local", 11112)]
    assert settings.dicom_allowed_aes == [AllowedCaller("ORTHANC", "127.0.0.1"), AllowedCaller("MODALITY")]


def test_yaml_file_named_by_m3edge_config_is_read_and_environment_wins(monkeypatch, tmp_path):
    config = tmp_path / "m3edge.yaml"
    config.write_text(
        "dicom_port: 4242\n"
        "study_idle_seconds: 12\n"
        "destinations:\n  - PACS@127.0.0.1:104\n  - {ae_title: B, host: 127.0.0.1, port: 105}\n"
    )
    monkeypatch.setenv("M3EDGE_CONFIG", str(config))
    monkeypatch.setenv("M3EDGE_STUDY_IDLE_SECONDS", "7")
    settings = Settings.load()
    assert settings.dicom_port == 4242
    assert settings.study_idle_seconds == 7
    assert [str(d) for d in settings.destinations] == ["PACS@127.0.0.1:104", "B@127.0.0.1:105"]


def test_missing_config_file_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("M3EDGE_CONFIG", str(tmp_path / "absent.yaml"))
    with pytest.raises(ConfigurationError, match="absent.yaml"):
        Settings.load()


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("M3EDGE_DESTINATIONS", "PACS:104", "AE@host:port"),
        ("M3EDGE_DICOM_AE_TITLE", "A" * 17, "1-16"),
        ("M3EDGE_DICOM_PORT", "70000", "dicom_port"),
        ("M3EDGE_VLM_BACKEND", "openai", "VLM_URL"),
        ("M3EDGE_API_HOST", "not a host", "not an IP address"),
        ("M3EDGE_UNKNOWN_SETTING", "1", None),
    ],
)
def test_bad_values_name_the_setting(monkeypatch, name, value, fragment):
    monkeypatch.setenv(name, value)
    if fragment is None:  # unknown environment variables are ignored (they may belong to another version)
        Settings.load()
        return
    with pytest.raises(ConfigurationError, match=fragment):
        Settings.load()


def test_fixed_value_settings_are_enums_and_a_wrong_value_names_the_choices(monkeypatch):
    from service.config import RejectAction, SlicePolicy, VlmDtype

    monkeypatch.setenv("M3EDGE_REJECT_ACTION", "patient_safety")
    monkeypatch.setenv("M3EDGE_VLM_DTYPE", "bfloat16")
    settings = Settings.load()
    assert settings.reject_action is RejectAction.PATIENT_SAFETY and settings.vlm_dtype is VlmDtype.BFLOAT16
    assert settings.agent_slice_policy is SlicePolicy.MOST_STRUCTURE
    monkeypatch.setenv("M3EDGE_REJECT_ACTION", "patient-safety")
    with pytest.raises(ConfigurationError, match="(?s)reject_action.*'none', 'quality' or 'patient_safety'"):
        Settings.load()


def test_the_example_yaml_configuration_loads_and_the_environment_wins(monkeypatch, tmp_path):
    from service.composition import stage_time_limits
    from service.config import RejectAction

    example = Path(__file__).resolve().parents[3] / "deploy" / "m3edge.example.yaml"
    monkeypatch.setenv("M3EDGE_CONFIG", str(example))
    monkeypatch.setenv("M3EDGE_HOME", str(tmp_path))
    settings = Settings.load()
    assert settings.home == tmp_path  # the environment wins over the file
    assert settings.dicom_allowed_aes == [AllowedCaller.parse("CT01"), AllowedCaller.parse("PACS@10.0.0.20")]
    assert settings.destinations == [DicomAddress.parse("PACS@10.0.0.20:104")]
    assert settings.reject_action is RejectAction.NONE and settings.api_host == "127.0.0.1"
    assert stage_time_limits(settings)["expert"].hard_s == 3600
    readme = (example.parents[1] / "README.md").read_text().split("\n## Configuration", 1)[1].split("\n## ", 1)[0]
    shown = tmp_path / "readme.yaml"
    shown.write_text(readme.split("```yaml\n", 1)[1].split("```", 1)[0])
    monkeypatch.setenv("M3EDGE_CONFIG", str(shown))
    assert Settings.load().destinations == settings.destinations  # the README's example says the same
    broken = tmp_path / "broken.yaml"
    broken.write_text(example.read_text().replace("dicom_ae_title:", "dicom_ae_titel:"))
    monkeypatch.setenv("M3EDGE_CONFIG", str(broken))
    with pytest.raises(ConfigurationError, match="dicom_ae_titel"):
        Settings.load()


def test_the_settings_import_nothing_of_the_pipeline_or_the_command_line():
    import subprocess
    import sys

    probe = ("import sys, service.config; print(sorted(m for m in sys.modules if m.startswith(('service.pipeline', "
             "'service.cli', 'celery', 'torch'))))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "[]", result.stdout + result.stderr
