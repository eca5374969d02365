"""`m3edge serve` runs out of the box: with no models installed it writes the DEMO models, and only then."""

from service.cli.serve import ensure_models
from service.config import Settings


def test_demo_models_are_written_only_when_none_are_installed(tmp_path):
    written = []

    def writer(models_dir):  # records the call; the real writer is exercised by tests/unit/engines/test_model_store.py
        written.append(models_dir)
        (models_dir / "cxr").mkdir(parents=True)

    settings = Settings(home=tmp_path / "home")
    assert ensure_models(settings, writer) is True
    assert written == [settings.models_dir]
    assert ensure_models(settings, writer) is False  # something is installed now
    assert len(written) == 1


def test_the_setting_turns_it_off(tmp_path):
    settings = Settings(home=tmp_path / "home", demo_models_when_empty=False)
    assert ensure_models(settings, lambda d: (_ for _ in ()).throw(AssertionError("must not write"))) is False
