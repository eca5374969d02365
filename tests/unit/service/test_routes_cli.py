"""``m3edge routes check`` and ``m3edge routes dry-run`` through the real entry point."""

import subprocess
import sys

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from service.db.models import Instance, Series, Study, StudyStatus
from service.db.session import session_scope

DX = "1.2.840.10008.5.1.4.1.1.1.1"


def run_cli(env_extra, *args):
    env = {"PATH": "/usr/bin:/bin", **env_extra}
    return subprocess.run([sys.executable, "-c", "from service.cli.main import main; main()", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def _write_header(path, study_uid, series_uid, sop_uid, **attributes):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = DX
    ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
    ds.SOPClassUID, ds.SOPInstanceUID = DX, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _record(session_factory, study_uid, series_uid, sop_uid, relative, modality) -> None:
    with session_scope(session_factory) as session:
        s = Study(study_uid=study_uid, status=StudyStatus.COMPLETE, modalities=modality)
        ser = Series(series_uid=series_uid, modality=modality)
        ser.instances.append(Instance(sop_instance_uid=sop_uid, sop_class_uid=DX, transfer_syntax_uid=ExplicitVRLittleEndian,
                                      path=relative, size_bytes=1, digest="0" * 64))
        s.series.append(ser)
        session.add(s)


def test_dry_run_explains_the_choice_for_a_stored_study(database_url, session_factory, tmp_path):
    home = tmp_path / "home"
    study_uid, series_uid, sop_uid = generate_uid(), generate_uid(), generate_uid()
    relative = f"{study_uid}/{series_uid}/{sop_uid}.dcm"
    _write_header(home / "spool" / relative, study_uid, series_uid, sop_uid, Modality="DX", ViewPosition="AP",
                  BodyPartExamined="CHEST")
    _record(session_factory, study_uid, series_uid, sop_uid, relative, "DX")
    env = {"M3EDGE_HOME": str(home), "M3EDGE_DATABASE_URL": database_url}
    result = run_cli(env, "routes", "dry-run", study_uid)
    assert result.returncode == 0, result.stderr
    assert "[MATCH] chest-xray" in result.stdout and "-> chest-xray" in result.stdout
    assert "Modality 'DX' fails == 'CT'" in result.stdout
    assert "1 series show chest: BodyPartExamined 'CHEST' is chest" in result.stdout

    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - name: pa-only\n    match:\n      any_series: {ViewPosition: PA}\n    expert: CXR\n")
    skipped = run_cli(env, "routes", "dry-run", study_uid, "--rules", str(rules))
    assert "skipped: no routing rule matched: pa-only: no series passes any_series (ViewPosition 'AP' fails == 'PA')" in skipped.stdout


def test_dry_run_says_which_test_a_real_tibia_radiograph_failed(database_url, session_factory, tmp_path):
    from pydicom import dcmread
    from pydicom.data import get_testdata_file

    home = tmp_path / "home"
    tibia = dcmread(get_testdata_file("RG3_UNCR.dcm"))  # pydicom's test data: a CR AP of a distal tibia
    relative = f"{tibia.StudyInstanceUID}/{tibia.SeriesInstanceUID}/{tibia.SOPInstanceUID}.dcm"
    (home / "spool" / relative).parent.mkdir(parents=True)
    tibia.save_as(home / "spool" / relative)
    _record(session_factory, tibia.StudyInstanceUID, tibia.SeriesInstanceUID, tibia.SOPInstanceUID, relative, "CR")
    env = {"M3EDGE_HOME": str(home), "M3EDGE_DATABASE_URL": database_url}
    result = run_cli(env, "routes", "dry-run", tibia.StudyInstanceUID)
    assert result.returncode == 0, result.stderr
    assert "1 series pass any_series" in result.stdout  # a CR with ViewPosition AP, as a chest radiograph has
    assert ("anatomy: no series shows chest (BodyPartExamined 'EXTREMITY' is not chest (CHEST, THORAX, LUNG))"
            in result.stdout)
    assert "-> skipped" in result.stdout and "skipped: no routing rule matched" in result.stdout
    missing = run_cli(env, "routes", "dry-run", "1.2.3.4")
    assert missing.returncode == 2 and "no study" in missing.stderr


def test_check_reports_line_and_field(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("version: 1\nrules:\n  - name: x\n    match:\n      any_series: {Modality: CT}\n    expert: CT\n")
    result = run_cli({"M3EDGE_HOME": str(tmp_path)}, "routes", "check", str(rules))
    assert result.returncode == 2
    assert "line 6: rules.0.expert" in result.stderr
    ok = run_cli({"M3EDGE_HOME": str(tmp_path)}, "routes", "check")
    assert ok.returncode == 0 and "3 rules OK" in ok.stdout
