"""The memoised ``set_uid`` answers exactly as pynetdicom's own, and keeps failing for what fails."""

from __future__ import annotations

import pytest
from pydicom.uid import UID
from pynetdicom import pdu_items, pdu_primitives, presentation, utils
from pynetdicom.presentation import build_context

from dicom_node.scp import uid_cache


@pytest.fixture
def installed(monkeypatch):
    for module in uid_cache.NEGOTIATION_MODULES:
        monkeypatch.setattr(module, "set_uid", utils.set_uid)
    uid_cache.install()
    uid_cache.install()  # idempotent: wrapped once
    return presentation.set_uid


def test_install_puts_one_memoised_function_into_the_negotiation_modules(installed):
    assert installed is not utils.set_uid and installed.__wrapped_original__ is utils.set_uid
    assert pdu_items.set_uid is installed and pdu_primitives.set_uid is installed


@pytest.mark.parametrize(
    ("value", "kwargs"),
    [("1.2.840.10008.1.2.1", {}), (b"1.2.840.10008.5.1.4.1.1.2\x00", {}), (UID("1.2.3"), {}), ("", {}),
     (None, {}), ("1.2.3", {"validate": False})],
)
def test_the_memoised_function_answers_as_pynetdicoms(installed, value, kwargs):
    expected = utils.set_uid(value, "x", **kwargs)
    assert installed(value, "x", **kwargs) == expected
    assert installed(value, "x", **kwargs) == expected  # from the cache
    assert type(installed(value, "x", **kwargs)) is type(expected)


@pytest.mark.parametrize("value", ["1.2." + "3" * 70, "x" * 65])
def test_a_uid_pynetdicom_refuses_is_refused_every_time(installed, value):
    for _ in range(2):
        with pytest.raises(ValueError, match="must not exceed 64 characters"):
            installed(value, "x")


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("value", ["1.2.a", "1..2"])
def test_a_non_conformant_uid_pynetdicom_accepts_is_accepted_as_it_is(installed, value):
    assert installed(value, "x") == utils.set_uid(value, "x") == value


def test_empty_and_none_are_refused_when_not_allowed(installed):
    with pytest.raises(ValueError, match="must not be an empty"):
        installed("", "x", allow_empty=False)
    with pytest.raises(TypeError):
        installed(None, "x", allow_none=False)


def test_negotiation_objects_built_with_it_are_unchanged(installed):
    context = build_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"])
    assert context.abstract_syntax == "1.2.840.10008.5.1.4.1.1.2"
    assert context.transfer_syntax == ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]
