"""What doctor and the admin page report. One disk figure everywhere: both word the spool's disk the same way (free
GiB of total, % used) and judge it by the node's own admission rule (SPOOL_HIGH_WATER_PERCENT, SPOOL_RESERVE_BYTES)."""

import re

from service.api.ui.node_health import NodeHealth
from service.cli.doctor import Verdict, _spool
from service.config import Settings

WORDING = re.compile(r"(\d+\.\d) GiB free of (\d+\.\d) GiB, (\d+)% used$")


def test_doctor_and_the_admin_page_give_the_same_disk_figure_in_the_same_words(tmp_path):
    settings = Settings(home=tmp_path, spool_reserve_bytes=0)
    settings.spool_dir.mkdir(parents=True)
    doctor, admin = _spool(settings), NodeHealth(settings, ledger=None).spool()
    assert doctor.detail.startswith(f"{settings.spool_dir}: ")
    ours, theirs = WORDING.search(doctor.detail), WORDING.search(admin.detail)
    assert ours and theirs, (doctor.detail, admin.detail)
    assert ours.group(2) == theirs.group(2) and abs(int(ours.group(3)) - int(theirs.group(3))) <= 1
    assert (doctor.verdict, admin.state) == (Verdict.OK, "ok")


def test_both_report_the_refusal_the_node_would_make(tmp_path):
    settings = Settings(home=tmp_path, spool_reserve_bytes=1 << 60)  # more than any disk has free
    settings.spool_dir.mkdir(parents=True)
    doctor, admin = _spool(settings), NodeHealth(settings, ledger=None).spool()
    assert doctor.verdict is Verdict.FAIL and "new associations are refused" in doctor.detail
    assert admin.state == "error" and "new associations are refused" in admin.detail


def test_doctor_fails_the_configuration_on_stage_limits_the_service_would_refuse(tmp_path):
    from service.cli.doctor import _configuration

    good = _configuration(Settings(home=tmp_path, stage_time_limits={"expert": {"hard": 3600}}))
    bad = _configuration(Settings(home=tmp_path, stage_time_limits={"expert": {"soft": 4000, "hard": 3600}}))
    assert good.verdict is Verdict.OK and bad.verdict is Verdict.FAIL
    assert bad.detail.startswith("STAGE_TIME_LIMITS: stage expert") and "4000" in bad.detail
