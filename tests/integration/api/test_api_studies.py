"""The studies API over real HTTP: filters, pagination, details with stage timings, reprocess, audit, metrics."""

from datetime import datetime, timedelta, timezone

import httpx

from service.db.models import Instance, Series, Study, StudyStatus
from service.db.session import session_scope
from service.pipeline.stages import Stage


def seed(session_factory):
    now = datetime.now(timezone.utc)
    with session_scope(session_factory) as session:
        for n, (modality, status, date) in enumerate(
            [("CT", StudyStatus.DONE, "20260101"), ("MR", StudyStatus.FAILED, "20260201"),
             ("DX", StudyStatus.COMPLETE, "20260301"), ("CT\\SR", StudyStatus.DONE, "20260401")]
        ):
            uid = f"1.2.826.0.1.3680043.8.498.{n + 1}"
            study = Study(study_uid=uid, status=status, modalities=modality, study_date=date, study_description=f"S{n}",
                          last_received_at=now - timedelta(minutes=n))
            series = Series(series_uid=uid + ".1", modality=modality.split("\\")[0], series_number=1)
            series.instances.append(Instance(sop_instance_uid=uid + ".1.1", sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                                             transfer_syntax_uid="1.2.840.10008.1.2.1", path=f"{uid}/a.dcm",
                                             size_bytes=10, digest="0" * 64))
            study.series.append(series)
            session.add(study)


def test_list_filters_and_paginates(api, session_factory):
    base, tokens, _, _ = api
    seed(session_factory)
    headers = {"Authorization": f"Bearer {tokens['reviewer']}"}
    with httpx.Client(base_url=base, headers=headers) as client:
        page = client.get("/api/v1/studies", params={"limit": 2}).json()
        assert page["total"] == 4 and len(page["items"]) == 2
        assert [i["study_uid"][-1] for i in page["items"]] == ["1", "2"]
        second = client.get("/api/v1/studies", params={"limit": 2, "offset": 2}).json()
        assert [i["study_uid"][-1] for i in second["items"]] == ["3", "4"]
        ct = client.get("/api/v1/studies", params={"modality": "CT"}).json()
        assert sorted(i["study_uid"][-1] for i in ct["items"]) == ["1", "4"]
        assert client.get("/api/v1/studies", params={"status": "failed"}).json()["total"] == 1
        dated = client.get("/api/v1/studies", params={"date_from": "20260115", "date_to": "20260315"}).json()
        assert sorted(i["study_uid"][-1] for i in dated["items"]) == ["2", "3"]


def test_detail_reprocess_and_audit(api, session_factory):
    base, tokens, dispatcher, _ = api
    seed(session_factory)
    uid = "1.2.826.0.1.3680043.8.498.2"
    reviewer = {"Authorization": f"Bearer {tokens['reviewer']}"}
    with httpx.Client(base_url=base) as client:
        detail = client.get(f"/api/v1/studies/{uid}", headers=reviewer).json()
        assert detail["status"] == "failed" and detail["series"][0]["instance_count"] == 1
        assert detail["runs"] == []
        missing = client.get("/api/v1/studies/1.2.3.4", headers=reviewer)
        assert missing.status_code == 404 and missing.json()["title"] == "study not found"

        accepted = client.post(f"/api/v1/studies/{uid}/reprocess", headers=reviewer, json={})
        assert accepted.status_code == 202, accepted.text
        assert [(t.run_id, t.stage) for t in dispatcher.sent] == [(accepted.json()["run_id"], Stage.PLAN)]
        runs = client.get(f"/api/v1/studies/{uid}", headers=reviewer).json()["runs"]
        assert runs[0]["trigger"] == "reprocess" and [s["stage"] for s in runs[0]["stages"]][0] == "plan"
        assert runs[0]["stages"][0]["status"] == "queued"

        audit = client.get("/api/v1/admin/audit", params={"study_uid": uid},
                           headers={"Authorization": f"Bearer {tokens['admin']}"}).json()
        assert {(e["actor"], e["action"]) for e in audit["items"]} >= {("rex", "study.read"), ("rex", "study.reprocess")}
        csv = client.get("/api/v1/admin/audit", params={"format": "csv"}, headers={"Authorization": f"Bearer {tokens['admin']}"})
        assert csv.headers["content-type"].startswith("text/csv") and "study.reprocess" in csv.text


def test_admin_creates_a_user_whose_token_works_and_health_endpoints(api, session_factory):
    base, tokens, _, _ = api
    seed(session_factory)
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=base) as client:
        created = client.post("/api/v1/admin/users", headers=admin, json={"name": "newbie", "role": "reviewer"})
        assert created.status_code == 201
        token = created.json()["token"]
        assert client.get("/api/v1/studies", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert client.post("/api/v1/admin/users", headers=admin, json={"name": "newbie", "role": "reviewer"}).status_code == 409
        users = client.get("/api/v1/admin/users", headers=admin).json()
        assert {u["name"] for u in users} == {"ada", "rex", "newbie"} and all("token" not in u for u in users)
        assert client.get("/api/v1/admin/destinations", headers=admin).json()[0]["address"] == "PACS@127.0.0.1:4242"
        assert [r["name"] for r in client.get("/api/v1/admin/routing-rules", headers=admin).json()["rules"]] == [
            "brain-mri-brats", "ct-vista3d", "chest-xray"]

        assert client.get("/healthz").json() == {"status": "ok"}
        assert client.get("/readyz").json()["status"] == "ready"
        metrics = client.get("/metrics").text
        assert 'm3edge_studies{modality="CT",status="done"} 1.0' in metrics
        assert 'm3edge_studies{modality="MR",status="failed"} 1.0' in metrics


def test_admin_sees_the_workers_that_ran_stages(api, session_factory):
    from service.pipeline.ledger import PipelineLedger
    from service.pipeline.stages import Stage

    base, tokens, _, _ = api
    seed(session_factory)
    ledger = PipelineLedger(session_factory)
    run_id = ledger.start_run("1.2.826.0.1.3680043.8.498.3")
    ledger.claim(run_id, Stage.PLAN, "gpu-worker@host1")
    workers = httpx.get(base + "/api/v1/admin/workers", headers={"Authorization": f"Bearer {tokens['admin']}"}).json()
    assert [(w["name"], w["stages_run"], w["running_now"]) for w in workers] == [("gpu-worker@host1", 1, 1)]


def test_admin_replaces_the_routing_rules_and_the_plan_stage_uses_them(api, session_factory):
    from service.routing.store import RoutingRulesStore

    base, tokens, _, app = api
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    store = RoutingRulesStore(app.state.settings)
    assert [r.name for r in store.load().rules] == ["brain-mri-brats", "ct-vista3d", "chest-xray"]
    with httpx.Client(base_url=base, headers=admin) as client:
        before = client.get("/api/v1/admin/routing-rules").json()
        assert before["source"] == "built-in" and "brain-mri-brats" in before["yaml"]

        bad = client.put("/api/v1/admin/routing-rules",
                         json={"yaml": "version: 1\nrules:\n  - name: x\n    match: {any_series: {Modality: CT}}\n"
                                       "    expert: VISTA4D\n"})
        assert bad.status_code == 422 and "line 5: rules.0.expert" in bad.json()["detail"]
        assert [r.name for r in store.load().rules][0] == "brain-mri-brats"  # nothing changed

        text = "version: 1\nrules:\n  - name: urgent-ct\n    priority: urgent\n    match: {any_series: {Modality: CT}}\n" \
               "    expert: VISTA3D\n    argument: organs\n"
        saved = client.put("/api/v1/admin/routing-rules", json={"yaml": text})
        assert saved.status_code == 200 and saved.json()["rules"] == ["urgent-ct"]
        after = client.get("/api/v1/admin/routing-rules").json()
        assert after["source"].endswith("routing_rules.yaml") and after["yaml"] == text
        reviewer = client.put("/api/v1/admin/routing-rules", json={"yaml": text},
                              headers={"Authorization": f"Bearer {tokens['reviewer']}"})
        assert reviewer.status_code == 403
        audit = client.get("/api/v1/admin/audit", params={"action": "admin.routing_rules.replace"}).json()
        assert [e["outcome"] for e in audit["items"]] == ["success", "invalid"]
    rules = RoutingRulesStore(app.state.settings).load()  # what a worker's plan stage reads
    assert [(r.name, r.priority.value, r.argument) for r in rules.rules] == [("urgent-ct", "urgent", "organs")]


def test_admin_replaces_the_default_destinations(api):
    from service.destinations import DestinationsStore

    base, tokens, _, app = api
    admin = {"Authorization": f"Bearer {tokens['admin']}"}
    with httpx.Client(base_url=base, headers=admin) as client:
        assert [d["address"] for d in client.get("/api/v1/admin/destinations").json()] == ["PACS@127.0.0.1:4242"]
        bad = client.put("/api/v1/admin/destinations", json={"destinations": ["PACS@127.0.0.1:4242", "ARCHIVE"]})
        assert bad.status_code == 422 and "'ARCHIVE'" in bad.json()["detail"]
        twice = client.put("/api/v1/admin/destinations", json={"destinations": ["A@127.0.0.1:1", "A@127.0.0.1:1"]})
        assert twice.status_code == 422
        saved = client.put("/api/v1/admin/destinations", json={"destinations": ["PACS@10.0.0.5:104", "VNA@vna.local:11112"]})
        assert saved.status_code == 200
        assert [d["address"] for d in client.get("/api/v1/admin/destinations").json()] == [
            "PACS@10.0.0.5:104", "VNA@vna.local:11112"]
        assert client.put("/api/v1/admin/destinations", json={"destinations": []},
                          headers={"Authorization": f"Bearer {tokens['reviewer']}"}).status_code == 403
        audit = client.get("/api/v1/admin/audit", params={"action": "admin.destinations.replace"}).json()
        assert audit["items"][0]["detail"]["destinations"] == ["PACS@10.0.0.5:104", "VNA@vna.local:11112"]
    # what the plan stage, the review and doctor read, in any process sharing HOME
    assert [str(d) for d in DestinationsStore(app.state.settings).load()] == ["PACS@10.0.0.5:104", "VNA@vna.local:11112"]
