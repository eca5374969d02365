"""The reviewer's workstation over real HTTP (issue 16, points 1, 2 and 5): the worklist a reader works from (default
view, filters, search, sorting, paging, state in words), the patient context on every page and in QIDO-RS (PS3.18
matching of PatientName and PatientID), every read of it audited, the review with its confirmation step (the SR shown
before it is sent, the amendment found in the verified SR), and no patient data in any log line of these flows."""

from __future__ import annotations

import io
import logging
import re
from urllib.parse import quote

import httpx
import pydicom
import pytest
from sqlalchemy import literal, select, update

from dicom_node.results.summary import sr_content_lines
from service.api.server import uvicorn_options
from service.db.models import Instance, PipelineRun, Report, ReportStatus, Study
from service.db.session import session_scope
from tests.integration.api.conftest import api  # noqa: F401,F811  (the running API fixture)
from tests.integration.test_dashboard_forms import audit, log_in, page_token
from tests.support.dashboard_study import seed_failed_run, seed_radiograph_study, seed_reviewable_study

PATIENT_NAME, PATIENT_ID = "Synthetic^Patient", "M3E-CT"
DICOM_JSON = {"Accept": "application/dicom+json"}


def _texts(dataset) -> list[str]:
    return [line.value for line in sr_content_lines(dataset)]


@pytest.fixture
def workstation(api, session_factory, caplog):  # noqa: F811
    base, tokens, _, app = api
    caplog.set_level(logging.INFO)  # LOG_LEVEL's default
    demo = "1.2.826.0.1.3680043.8.498.1999"  # the DEMO draft of the same case, moved aside (result cases share UIDs)
    seeded = seed_reviewable_study(session_factory, app.state.settings, demo=True)
    with session_scope(session_factory) as session:
        session.execute(update(Study).where(Study.study_uid == seeded).values(study_uid=demo))
        session.execute(update(Instance).values(path=literal("demo/") + Instance.path))
    reviewable = seed_reviewable_study(session_factory, app.state.settings)
    failed = seed_failed_run(session_factory, app.state.settings)
    yield {"base": base, "tokens": tokens, "app": app, "reviewable": reviewable, "failed": failed, "demo": demo,
           "caplog": caplog, "session_factory": session_factory}


def _no_patient_data_logged(workstation) -> int:
    """Every log line the server wrote during the test: none names the patient, the ID or an accession number."""
    # The server's lines: the test's own HTTP client (httpx) logs its URLs, and uvicorn's access log (URLs with their
    # query strings) is off in m3edge (uvicorn_options: access_log=False); only pytest's capture re-attaches it.
    assert uvicorn_options(workstation["app"].state.settings)["access_log"] is False
    records = [r for r in workstation["caplog"].records if r.name not in {"httpx", "uvicorn.access"}]
    logged = "\n".join(r.getMessage() for r in records)
    for value in (PATIENT_NAME, "Synthetic", PATIENT_ID, "M3E-MR", "ACC-CT-1", "ACC-MR-1"):
        assert value.lower() not in logged.lower(), value
    return len(records)


def test_the_worklist_a_reader_works_from(workstation):
    w = workstation
    with httpx.Client(base_url=w["base"]) as client:
        log_in(client, "rex")
        page = client.get("/ui/").text
        # default: awaiting review only; the patient context shown; the state in words; compact table
        assert w["reviewable"] in page and w["demo"] in page and w["failed"] not in page
        assert "Synthetic, Patient" in page and PATIENT_ID in page and "ACC-CT-1" in page
        assert "awaiting review" in page and 'class="worklist compact"' in page
        failed = client.get("/ui/", params={"state": "failed"}).text
        assert w["failed"] in failed and w["reviewable"] not in failed
        assert "failed in expert: the expert model ran out of memory" in failed
        searched = client.get("/ui/", params={"state": "all", "q": "m3e-mr"}).text  # patient ID, any case
        assert w["failed"] in searched and w["reviewable"] not in searched
        by_accession = client.get("/ui/", params={"state": "all", "q": "ACC-CT"}).text
        assert w["reviewable"] in by_accession and w["failed"] not in by_accession
        with session_scope(w["session_factory"]) as session:  # as received before 0009: nothing recorded
            session.execute(update(Study).where(Study.study_uid == w["failed"]).values(
                patient_name=None, patient_id=None, accession_number=None))
        refilled = client.get("/ui/", params={"state": "failed"}).text  # from the study's spooled files
        assert "M3E-MR" in refilled and "not recorded" not in refilled
        too_long = client.get("/ui/", params={"q": "x" * 65}).text
        assert "Filter not applied: search: at most 64 characters" in too_long
        # sortable columns: the header links reverse the current sort
        ascending = client.get("/ui/", params={"state": "all", "sort": "patient_id"}).text
        assert ascending.index("M3E-CT") < ascending.index("M3E-MR")
        descending = client.get("/ui/", params={"state": "all", "sort": "-patient_id"}).text
        assert descending.index("M3E-MR") < descending.index("M3E-CT")
        assert 'href="/ui/?state=all&amp;sort=-patient_id"' in ascending
        # paging keeps the filters; the live refresh fragment answers the same rows with the total
        rows = client.get("/ui/worklist/rows", params={"state": "all"})
        assert rows.headers["x-total-count"] == "3"
        # next study awaiting review: the oldest first (both arrived at the same minute: the first seeded)
        following = client.get("/ui/next", params={"after": w["reviewable"]})
        assert following.status_code == 303 and following.headers["location"] == "/ui/studies/" + quote(w["demo"])
        assert page.index(w["demo"]) < page.index(w["reviewable"])
        with session_scope(w["session_factory"]) as session:  # an urgent study goes first, however recent
            session.execute(update(PipelineRun).where(PipelineRun.study_id == select(Study.id).where(
                Study.study_uid == w["reviewable"]).scalar_subquery()).values(priority="urgent"))
        urgent = client.get("/ui/").text
        assert urgent.index(w["reviewable"]) < urgent.index(w["demo"]) and "urgent-mark" in urgent
        assert client.get("/ui/next").headers["location"] == "/ui/studies/" + quote(w["reviewable"])
        with session_scope(w["session_factory"]) as session:
            session.execute(update(Report).values(status=ReportStatus.REJECTED))
        last = client.get("/ui/next", params={"after": w["reviewable"]}, follow_redirects=True)
        assert 'id="none-awaiting"' in last.text
    reads = audit(w["base"], w["tokens"], action="worklist.read")
    assert reads and {e["actor"] for e in reads} == {"rex"}
    assert any(w["failed"] in e["detail"]["studies"] for e in reads)
    assert all("m3e-mr" not in str(e).lower() for e in reads)  # the audit says that a search ran, not what for
    _no_patient_data_logged(workstation)


def test_the_study_page_shows_patient_findings_and_conversation(workstation):
    w = workstation
    with httpx.Client(base_url=w["base"]) as client:
        log_in(client, "rex")
        page = client.get(f"/ui/studies/{w['reviewable']}").text
        assert 'id="patient-name">Synthetic, Patient<' in page and f'id="patient-id">{PATIENT_ID}<' in page
        table = page.split('id="findings"')[1].split("</table>")[0]
        assert re.search(r"<td>liver</td>\s*<td class=\"number\">0\.48 mL</td>\s*<td class=\"present\">present", table)
        assert 'id="conversation"' in page and 'class="message expert"' in page
        assert 'id="overlay-legend"' in page and "swatch-red" in page
        assert 'id="next-study"' in page and "/ui/static/review.js" in page
        demo = client.get(f"/ui/studies/{w['demo']}").text
        assert 'id="demo-not-verifiable"' in demo and 'id="approve"' not in demo and 'id="amend"' not in demo
    _no_patient_data_logged(workstation)


def test_a_radiograph_study_shows_the_image_and_its_scores(workstation):
    from PIL import Image

    w = workstation
    study_uid = seed_radiograph_study(w["session_factory"], w["app"].state.settings)
    with httpx.Client(base_url=w["base"]) as client:
        log_in(client, "rex")
        page = client.get(f"/ui/studies/{study_uid}").text
        assert 'id="radiograph-image"' in page and f'src="/ui/studies/{study_uid}/radiograph.png"' in page
        table = page.split('id="findings"')[1].split("</table>")[0]
        assert re.search(r"<td>Effusion</td>\s*<td class=\"number\">—</td>\s*<td class=\"present\">present</td>"
                         r"\s*<td class=\"number\">0\.71</td>", table)
        assert re.search(r"<td>Pneumothorax</td>.*?<td class=\"absent\">absent</td>", table, re.S)
        picture = client.get(f"/ui/studies/{study_uid}/radiograph.png")
        assert picture.status_code == 200 and picture.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(picture.content)).size == (64, 64)
        assert client.get(f"/ui/studies/{w['reviewable']}/radiograph.png").status_code == 404  # a CT: none
    reads = audit(w["base"], w["tokens"], action="study.image.read")
    assert [(e["actor"], e["study_uid"]) for e in reads] == [("rex", study_uid)]
    _no_patient_data_logged(workstation)


def test_amend_shows_the_sr_before_sending_and_the_verified_sr_carries_the_changes(workstation):
    w = workstation
    path = f"/ui/studies/{w['reviewable']}"
    headers = {"Authorization": f"Bearer {w['tokens']['admin']}"}
    form = {"action": "amend", "version": "1", "narrative": "Liver normal. No focal lesion seen by the reader.",
            "comment": "", "finding-0-name": "liver", "finding-0-verdict": "", "finding-0-note": "",
            "finding-1-name": "hepatic tumor", "finding-1-verdict": "absent", "finding-1-note": "cyst, not a tumour"}
    with httpx.Client(base_url=w["base"]) as client:
        log_in(client, "rex")
        token = page_token(client, path)
        confirm = client.post(path + "/review", data={**form, "csrf_token": token})
        assert confirm.status_code == 200 and 'id="review-confirm"' in confirm.text
        assert "Liver normal. No focal lesion seen by the reader." in confirm.text
        assert "Reader&#39;s assessment of hepatic tumor: absent. cyst, not a tumour" in confirm.text
        assert 'name="confirmed" value="yes"' in confirm.text
        report = httpx.get(f"{w['base']}/api/v1/studies/{w['reviewable']}/report", headers=headers).json()
        assert (report["status"], report["version"]) == ("draft", 1)  # nothing sent or written before confirming
        done = client.post(path + "/review", data={**form, "csrf_token": token, "confirmed": "yes"})
        assert done.status_code == 303 and done.headers["location"].endswith("?done=amend")
        page = client.get(path).text
        assert "cyst, not a tumour" in page  # the findings table shows the reader's word
    sr = httpx.get(f"{w['base']}/api/v1/studies/{w['reviewable']}/report",
                   headers={**headers, "Accept": "application/dicom"})
    dataset = pydicom.dcmread(io.BytesIO(sr.content))
    assert dataset.VerificationFlag == "VERIFIED"
    texts = _texts(dataset)
    assert "Liver normal. No focal lesion seen by the reader." in texts
    assert "Reader's assessment of hepatic tumor: absent. cyst, not a tumour" in texts
    assert not any("liver:" in t.lower() and "reader" in t.lower() for t in texts)  # "as drafted": nothing added
    assert [e["detail"]["corrected_findings"] for e in audit(w["base"], w["tokens"], action="review.amend")] == [1]
    assert _no_patient_data_logged(workstation) > 0  # the flow did log: the scan read real lines


def test_approve_and_reject_confirm_first_and_a_stale_confirmation_is_a_conflict(workstation):
    w = workstation
    path = f"/ui/studies/{w['reviewable']}"
    with httpx.Client(base_url=w["base"]) as client:
        log_in(client, "rex")
        token = page_token(client, path)
        confirm = client.post(path + "/review", data={"action": "approve", "version": "1", "csrf_token": token})
        assert "The verified SR that will be sent" in confirm.text and "PACS@127.0.0.1:4242" in confirm.text
        reject = client.post(path + "/review", data={"action": "reject", "version": "1", "csrf_token": token,
                                                     "comment": "Wrong series."})
        assert "Nothing will be sent" in reject.text and 'id="confirm-reason">Wrong series.<' in reject.text
        done = client.post(path + "/review", data={"action": "approve", "version": "1", "csrf_token": token,
                                                   "confirmed": "yes"})
        assert done.status_code == 303
        stale = client.post(path + "/review", data={"action": "reject", "version": "1", "csrf_token": token,
                                                    "comment": "Wrong series.", "confirmed": "yes"})
        assert stale.status_code == 409
    _no_patient_data_logged(workstation)


def test_qido_matches_patient_name_and_id_as_ps3_18_says_and_audits_it(workstation):
    w = workstation
    headers = {**DICOM_JSON, "Authorization": f"Bearer {w['tokens']['reviewer']}"}
    base = w["base"] + "/dicomweb/studies"

    def found(**params) -> set[str]:
        response = httpx.get(base, params=params, headers=headers)
        assert response.status_code == 200, response.text
        return {item["0020000D"]["Value"][0] for item in response.json()}

    ct, mr = w["reviewable"], w["failed"]
    assert found(PatientID=PATIENT_ID) == {ct, w["demo"]}  # single value
    assert found(PatientID="M3E-M?") == {mr}  # wildcard ?
    assert found(PatientID="m3e-mr") == set()  # Patient ID: exact case
    assert found(PatientName="synth*") == {ct, mr, w["demo"]}  # PN: any case, wildcard *
    assert found(PatientName="SYNTHETIC^PATIENT") == {ct, mr, w["demo"]}
    assert found(PatientName="Synthetic^P?tient", PatientID="M3E-MR") == {mr}
    assert found(PatientName="*_*") == set()  # "_" is literal, not SQL's wildcard
    assert found(AccessionNumber="ACC-MR-1") == {mr}
    answer = httpx.get(base, params={"PatientID": "M3E-MR"}, headers=headers).json()[0]
    assert answer["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": PATIENT_NAME}]}
    assert answer["00100020"]["Value"] == ["M3E-MR"] and answer["00080050"]["Value"] == ["ACC-MR-1"]
    # fuzzy matching only when asked: the name's words in any order and case
    assert found(PatientName="patient synthetic") == set()
    assert found(PatientName="patient synthetic", fuzzymatching="true") == {ct, mr, w["demo"]}
    assert found(PatientName="patient bogus", fuzzymatching="true") == set()
    assert found(PatientName="patient synthetic", fuzzymatching="false") == set()
    too_long = httpx.get(base, params={"PatientID": "x" * 65}, headers=headers)
    assert too_long.status_code == 400
    searches = audit(w["base"], w["tokens"], action="dicomweb.search")
    assert any(e["detail"]["studies"] == [mr] and e["actor"] == "rex" for e in searches)
    _no_patient_data_logged(workstation)
