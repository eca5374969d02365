"""The memoised ``set_uid`` answers exactly as pynetdicom's own, and keeps failing for what fails."""

from __future__ import annotations

import logging

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


@pytest.fixture
def fast_contexts(monkeypatch):
    original = presentation.PresentationContext.add_transfer_syntax
    original = getattr(original, "__wrapped_original__", original)
    monkeypatch.setattr(presentation.PresentationContext, "add_transfer_syntax", original)
    for module in uid_cache.NEGOTIATION_MODULES:
        monkeypatch.setattr(module, "set_uid", utils.set_uid)
    uid_cache.install()
    uid_cache.install()  # idempotent: wrapped once
    fast = presentation.PresentationContext.add_transfer_syntax
    assert fast.__wrapped_original__ is original
    return original


def _contexts_built(add, syntaxes) -> list:
    context = presentation.PresentationContext()
    for syntax in syntaxes:
        add(context, syntax)
    return context.transfer_syntax


def _private(value, encoding=(False, True)):
    uid = UID(value)
    if encoding is not None:
        uid.set_private_encoding(*encoding)
    return uid


_PUBLIC_WITH_ENCODING = _private("1.2.840.10008.1.2.1")

VALUES = [
    "1.2.840.10008.1.2.1", b"1.2.840.10008.1.2.1", UID("1.2.840.10008.1.2.1"), " 1.2.840.10008.1.2.1 ",
    "1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.1\x00", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.50",
    "", b"", None, 3, 1.5, bytearray(b"1.2.840.10008.1.2"), ["1.2.840.10008.1.2"],
    "1.2.a", "1..2", "1.2." + "3" * 70, "1.2.840.10008.5.1.4.1.1.2", "1.2.3.4.5",
    _private("1.2.3.4.5"), _private("1.2.3.4.6", (True, True)), b"\xff\xfe", "1.2.840.10008.1.2.1 ",
    _PUBLIC_WITH_ENCODING,
]


def _run(add, sequence, caplog):
    context = presentation.PresentationContext()
    outcome = []
    for value in sequence:
        caplog.clear()
        try:
            add(context, value)
            error = None
        except Exception as exc:  # noqa: BLE001
            error = (type(exc), str(exc))
        outcome.append((error, [(r.levelname, r.getMessage()) for r in caplog.records]))
    return outcome, [(str(u), type(u), getattr(u, "_PRIVATE_TS_ENCODING", None)) for u in context.transfer_syntax]


@pytest.mark.filterwarnings("ignore")
def test_the_fast_path_adds_raises_and_logs_as_pynetdicom_value_by_value(fast_contexts, caplog):
    """Every value, twice, in several orders: the same UIDs (type, private encoding), errors and log records."""
    values, original = VALUES, fast_contexts
    caplog.set_level(logging.DEBUG)
    fast = presentation.PresentationContext.add_transfer_syntax
    sequences = [values, values[::-1], values + values, [v for pair in zip(values, values) for v in pair]]
    for sequence in sequences * 3:
        assert _run(fast, sequence, caplog) == _run(original, sequence, caplog)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("value", ["1.2." + "3" * 70, ""])
def test_a_transfer_syntax_pynetdicom_refuses_is_refused_every_time(fast_contexts, value):
    fast = presentation.PresentationContext.add_transfer_syntax
    for _ in range(2):
        with pytest.raises(ValueError):
            _contexts_built(fast, [value])


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize(("value", "warning"), [
    ("1.2.840.10008.5.1.4.1.1.2", "not a transfer syntax"),  # a SOP class
    (" 1.2.840.10008.1.2.1 ", "Invalid value for VR UI"),  # padded: pydicom strips it, and warns
    (b"1.2.840.10008.1.2.1 ", "Invalid value for VR UI"),
])
def test_warnings_are_logged_every_time_not_only_the_first(fast_contexts, caplog, value, warning):
    fast = presentation.PresentationContext.add_transfer_syntax
    for _ in range(2):  # each time in a new context, as each association makes its own
        caplog.clear()
        _contexts_built(fast, [value])
        assert warning in caplog.text


def test_a_decoded_association_request_gives_the_same_contexts(fast_contexts):
    from pynetdicom.pdu import A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import A_ASSOCIATE
    from pynetdicom.presentation import StoragePresentationContexts
    from pynetdicom.transport import AddressInformation

    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title, request.called_ae_title = "STORESCU", "M3EDGE"
    request.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    request.called_presentation_address = AddressInformation("127.0.0.1", 2)
    request.presentation_context_definition_list = [
        build_context(cx.abstract_syntax, ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.4.70"])
        for cx in StoragePresentationContexts[:120]
    ]
    for index, cx in enumerate(request.presentation_context_definition_list):
        cx.context_id = 2 * index + 1
    encoded = A_ASSOCIATE_RQ()
    encoded.from_primitive(request)
    data = encoded.encode()

    def decoded() -> list[tuple]:
        pdu = A_ASSOCIATE_RQ()
        pdu.decode(data)
        return [(cx.context_id, cx.abstract_syntax, tuple(cx.transfer_syntax))
                for cx in pdu.to_primitive().presentation_context_definition_list]

    fast = presentation.PresentationContext.add_transfer_syntax
    with pytest.MonkeyPatch.context() as plain:
        plain.setattr(presentation.PresentationContext, "add_transfer_syntax", fast_contexts)
        expected = decoded()
    assert decoded() == expected == decoded()
    assert len(expected) == 120
