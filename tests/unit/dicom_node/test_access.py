import pytest

from dicom_node.network import AllowedCaller
from dicom_node.scp.access import CALLING_AE_NOT_RECOGNISED, AccessPolicy
from dicom_node.intake.admission import DiskAdmission, DiskUsage


def test_without_a_list_only_loopback_callers_are_accepted():
    policy = AccessPolicy([])
    assert policy.loopback_only
    assert policy.check("ANYONE", "127.0.0.1") is None
    assert policy.check("ANYONE", "::1") is None
    assert policy.check("ANYONE", "::ffff:127.0.0.1") is None
    refusal = policy.check("ANYONE", "10.1.2.3")
    assert refusal is not None and "only loopback" in refusal.reason
    assert refusal.rejection == CALLING_AE_NOT_RECOGNISED
    assert "loopback" in policy.describe()


def test_listed_ae_titles_are_accepted_from_anywhere_and_others_refused():
    policy = AccessPolicy([AllowedCaller.parse("PACS"), AllowedCaller.parse("CT01")])
    assert policy.check("PACS", "10.1.2.3") is None
    assert policy.check("CT01 ", "192.168.0.9") is None  # AE titles arrive space-padded
    refusal = policy.check("INTRUDER", "127.0.0.1")
    assert refusal is not None and "not in DICOM_ALLOWED_AES" in refusal.reason
    assert policy.check("pacs", "10.1.2.3") is not None  # AE titles are case-sensitive


def test_an_ae_bound_to_a_host_is_refused_from_elsewhere():
    policy = AccessPolicy([AllowedCaller.parse("PACS@10.0.0.5"), AllowedCaller.parse("LOCAL@localhost")])
    assert policy.check("PACS", "10.0.0.5") is None
    assert policy.check("PACS", "::ffff:10.0.0.5") is None
    refusal = policy.check("PACS", "10.0.0.6")
    assert refusal is not None and "not from 10.0.0.6" in refusal.reason
    assert policy.check("LOCAL", "127.0.0.1") is None  # host names resolve once, at start-up
    assert "PACS@10.0.0.5" in policy.describe()


def test_disk_usage_reads_the_real_file_system(tmp_path):
    usage = DiskUsage.of(tmp_path)
    assert usage.total_bytes > 0 and 0 <= usage.free_bytes <= usage.total_bytes
    assert 0.0 <= usage.used_percent <= 100.0


def test_admission_refuses_below_the_reserve_and_above_the_high_water_mark(tmp_path):
    usage = DiskUsage.of(tmp_path)
    assert DiskAdmission(tmp_path, 100, 0).refusal() is None
    below_reserve = DiskAdmission(tmp_path, 100, usage.total_bytes + 1).refusal()
    assert below_reserve is not None and "SPOOL_RESERVE_BYTES" in below_reserve
    if usage.used_percent > 0.001:
        above = DiskAdmission(tmp_path, usage.used_percent / 2, 0).refusal()
        assert above is not None and "SPOOL_HIGH_WATER_PERCENT" in above


@pytest.mark.parametrize("percent, reserve, message", [(0, 0, "high_water_percent"), (101, 0, "high_water_percent"),
                                                       (90, -1, "reserve_bytes")])
def test_admission_refuses_nonsense_limits(tmp_path, percent, reserve, message):
    with pytest.raises(ValueError, match=message):
        DiskAdmission(tmp_path, percent, reserve)


def test_a_wrong_called_ae_title_is_refused_unless_any_is_accepted():
    from dicom_node.scp.access import CALLED_AE_NOT_RECOGNISED

    strict = AccessPolicy([], own_ae_title="M3EDGE")
    assert strict.check("ANY", "127.0.0.1", called_ae="M3EDGE ") is None
    refusal = strict.check("ANY", "127.0.0.1", called_ae="WRONGCALLED")
    assert refusal is not None and refusal.rejection == CALLED_AE_NOT_RECOGNISED
    assert refusal.kind == "called AE not recognised" and "DICOM_REQUIRE_CALLED_AE" in refusal.reason
    lenient = AccessPolicy([], own_ae_title="M3EDGE", require_called_ae=False)
    assert lenient.check("ANY", "127.0.0.1", called_ae="WRONGCALLED") is None


def test_the_own_health_check_passes_any_list_but_only_from_loopback_for_verification_only():
    verification, ct = ["1.2.840.10008.1.1"], ["1.2.840.10008.1.1", "1.2.840.10008.5.1.4.1.1.2"]
    policy = AccessPolicy([AllowedCaller.parse("PACS@10.0.0.5"), AllowedCaller.parse("M3EDGE@10.9.9.9")],
                          own_ae_title="M3EDGE")
    assert policy.check("M3EDGE", "127.0.0.1", called_ae="M3EDGE", proposed=verification) is None
    assert policy.check("M3EDGE", "::1", called_ae="M3EDGE", proposed=verification) is None
    assert policy.check("M3EDGE", "127.0.0.1", called_ae="M3EDGE", proposed=ct) is not None  # storage: judged by the list
    assert policy.check("M3EDGE", "10.1.1.1", called_ae="M3EDGE", proposed=verification) is not None
    assert policy.check("OTHER", "127.0.0.1", called_ae="M3EDGE", proposed=verification) is not None
    assert policy.check("M3EDGE", "127.0.0.1", called_ae="M3EDGE", proposed=[]) is not None
