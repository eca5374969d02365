import pytest

from dicom_node.uids import InvalidUid, validate_uid


@pytest.mark.parametrize(
    "value, expected",
    [
        ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2"),
        ("1.2.3\x00", "1.2.3"),  # NUL padding of an odd-length UI value
        (" 1.2.3 ", "1.2.3"),
        ("1.2.03", "1.2.03"),  # leading zero: non-conformant but harmless, and found in real archives
        ("2.25." + "9" * 59, "2.25." + "9" * 59),
    ],
)
def test_valid_uids_are_returned_clean(value, expected):
    assert validate_uid(value) == expected


@pytest.mark.parametrize(
    "value, reason",
    [
        ("..", "characters other than digits"),
        ("../../etc", "characters other than digits"),
        ("1.2/3", "characters other than digits"),
        ("1.2\\3", "characters other than digits"),
        ("1..2", "characters other than digits"),
        (".1.2", "characters other than digits"),
        ("1.2.", "characters other than digits"),
        ("1.2.3a", "characters other than digits"),
        ("1.2.\u0663", "characters other than digits"),  # an Arabic-Indic digit is not an ASCII digit
        ("1" * 65, "at most 64"),
        ("", "is empty"),
        ("\x00", "is empty"),
        (None, "is missing"),
        (b"1.2.3", "wrong type"),
    ],
)
def test_crafted_or_malformed_uids_are_refused(value, reason):
    with pytest.raises(InvalidUid, match=reason):
        validate_uid(value, "SOPInstanceUID")


def test_the_error_names_the_attribute():
    with pytest.raises(InvalidUid, match="^StudyInstanceUID ") as caught:
        validate_uid("..", "StudyInstanceUID")
    assert caught.value.attribute == "StudyInstanceUID"
