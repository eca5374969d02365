import pytest

from dicom_node.network import AllowedCaller, DicomAddress, validate_ae_title


def test_dicom_address_round_trips_through_text():
    address = DicomAddress.parse("PACS@10.1.2.3:104")
    assert (address.ae_title, address.host, address.port) == ("PACS", "10.1.2.3", 104)
    assert str(address) == "PACS@10.1.2.3:104"


@pytest.mark.parametrize("text", ["PACS", "PACS@host", "@host:104", "PACS@:104", "PACS@host:0", "PACS@bad host:104"])
def test_malformed_dicom_addresses_are_refused(text):
    with pytest.raises(ValueError):
        DicomAddress.parse(text)


def test_allowed_caller_optionally_binds_an_address():
    assert AllowedCaller.parse("CT1") == AllowedCaller("CT1", None)
    assert AllowedCaller.parse("CT1@192.168.1.9") == AllowedCaller("CT1", "192.168.1.9")


@pytest.mark.parametrize("title", ["", "   ", "A" * 17, "BACK\\SLASH", "TAB\tX"])
def test_invalid_ae_titles(title):
    with pytest.raises(ValueError):
        validate_ae_title(title)


def test_ae_title_padding_is_stripped():
    assert validate_ae_title("  M3EDGE ") == "M3EDGE"
