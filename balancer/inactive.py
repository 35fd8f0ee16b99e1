"""The keys that are parsed and validated but that nothing acts on yet: ONE list.

`balancer --check` names each one the file sets (`summary`), and the balancer logs one warning
for each at start (`cli.run`), so the tool never says more than it does. When a feature lands,
deleting its entry here is the only change: the summary then claims it again ("token required",
"cache on") and the warning goes. README "Configuration" marks the same keys "parsed".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # config.py imports this module for its summary
    from balancer.config import Config


@dataclass(frozen=True, slots=True)
class Inactive:
    """A key path, whether the config sets it to something that would matter, and what the
    balancer does instead."""

    key: str
    is_set: Callable[[Config], bool]
    instead: str

    @property
    def notice(self) -> str:
        return f"{self.key}: parsed, not active yet ({self.instead})"


def _changed(section: Any, *names: str) -> bool:
    """A section that differs from its defaults in `names` (in any field without them): set
    on purpose, `enabled` or not."""
    default = type(section)()
    if not names:
        return bool(section != default)
    return any(getattr(section, name) != getattr(default, name) for name in names)


INACTIVE: tuple[Inactive, ...] = (
    Inactive(
        "cache",
        lambda config: _changed(config.cache),
        "nothing is cached: every request goes to a backend",
    ),
    Inactive(
        "compression",
        lambda config: _changed(config.compression),
        "responses pass as the backend sent them, never gzipped",
    ),
)


def inactive(config: Config) -> list[Inactive]:
    """The entries of INACTIVE that `config` sets, in the list's order."""
    return [entry for entry in INACTIVE if entry.is_set(config)]
