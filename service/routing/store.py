"""Where the routing rules in force live, so an administrator can change them without a restart.

``ROUTING_RULES`` names the file when set; otherwise the file an administrator saved through the API
(``HOME/routing_rules.yaml``); otherwise the built-in defaults. Readers reload the file when it changes; a save is
validated first, written atomically, and the previous version is kept beside it (``.previous``).
"""

from __future__ import annotations

import threading
from pathlib import Path

from dicom_node.private_files import write_atomically, write_bytes_atomically
from service.config import Settings
from service.routing.rules import RuleSet, load_rules, parse_rules

__all__ = ["RoutingRulesStore"]

_DEFAULTS = Path(__file__).parent / "default_rules.yaml"


class RoutingRulesStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._cached: tuple[tuple, RuleSet] | None = None

    @property
    def writable_path(self) -> Path:
        return Path(self.settings.routing_rules) if self.settings.routing_rules else self.settings.home / "routing_rules.yaml"

    @property
    def path(self) -> Path | None:
        """The file in force, or None for the built-in rules."""
        if self.settings.routing_rules:
            return Path(self.settings.routing_rules)
        saved = self.settings.home / "routing_rules.yaml"
        return saved if saved.is_file() else None

    def describe(self) -> str:
        return str(self.path) if self.path else "built-in"

    def load(self) -> RuleSet:
        """The rules in force, re-read when their file changed (raises RoutingRulesError when it is invalid)."""
        path = self.path
        key = (str(path), path.stat().st_mtime_ns if path and path.exists() else 0)
        with self._lock:
            if self._cached is None or self._cached[0] != key:
                self._cached = (key, load_rules(path))
            return self._cached[1]

    def text(self) -> str:
        return (self.path or _DEFAULTS).read_text()

    def save(self, text: str) -> RuleSet:
        """Validate ``text`` (RoutingRulesError with line and field when invalid), then replace the rules in force."""
        rules = parse_rules(text, "the submitted rules")
        target = self.writable_path
        if target.exists():  # the rules replaced are kept beside them, and the rules in force never go missing
            write_bytes_atomically(target.with_name(target.name + ".previous"), target.read_bytes())
        with write_atomically(target, text=True) as handle:
            handle.write(text)
        with self._lock:
            self._cached = None
        return rules
