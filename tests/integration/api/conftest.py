import pytest

from service.api.app import create_app
from service.config import Settings
from service.db.session import session_scope
from service.pipeline.intake import PipelineIntake
from service.pipeline.ledger import PipelineLedger
from service.security import add_user
from tests.support.api_server import running_app


class RecordingDispatcher:
    """Test double for the Celery dispatcher (the API only sends; workers are tested elsewhere)."""

    def __init__(self, ledger):
        self.ledger = ledger
        self.sent = []
        self.deliveries = []

    def dispatch(self, ticket, countdown=0):
        self.sent.append(ticket)
        self.ledger.mark_queued(ticket)
        return True

    def deliver(self, run_id):
        self.deliveries.append(run_id)
        return True


@pytest.fixture
def api(database_url, session_factory, tmp_path):
    """A running API with an admin and a reviewer; yields (base_url, tokens, dispatcher)."""
    settings = Settings(home=tmp_path / "home", database_url=database_url, destinations="PACS@127.0.0.1:4242")
    (settings.spool_dir).mkdir(parents=True)
    ledger = PipelineLedger(session_factory)
    dispatcher = RecordingDispatcher(ledger)
    app = create_app(settings, session_factory, PipelineIntake(ledger, dispatcher))
    with session_scope(session_factory) as session:
        _, admin = add_user(session, "ada", "admin", display_name="Ada Admin", organisation="General Hospital",
                            password="correct horse battery")
        _, reviewer = add_user(session, "rex", "reviewer", display_name="Dr Rex Reviewer", organisation="General Hospital",
                               password="another long secret")
    with running_app(app) as base:
        yield base, {"admin": admin, "reviewer": reviewer}, dispatcher, app
