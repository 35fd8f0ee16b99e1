"""The command line's `--workers` and `--log-level` over the file's values.

A value, not a closure: it goes to every worker with the config (pickled), so a reload in a
worker applies the same overrides as one in a single process (a `--log-level debug` survives
a reload everywhere).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

from balancer.config import LOG_LEVELS, Config, check_workers


@dataclass(frozen=True, slots=True)
class CommandLine:
    log_level: str | None = None
    workers: str | None = None

    def __call__(self, config: Config) -> Config:
        """`config` with the overrides; ValueError with every problem of them."""
        problems: list[str] = []
        changes: dict[str, object] = {}
        if self.log_level is not None:
            level = self.log_level.upper()
            if level in LOG_LEVELS:
                changes["log_level"] = level
            else:
                problems.append(
                    f"--log-level: unknown level {self.log_level!r} "
                    "(valid: debug, info, warning, error)"
                )
        if self.workers is not None:
            if self.workers == "auto":
                changes["workers"] = os.cpu_count() or 1
                changes["workers_auto"] = True
            elif self.workers.isdigit() and int(self.workers) >= 1:
                changes["workers"] = int(self.workers)
                changes["workers_auto"] = False
            else:
                problems.append(
                    f"--workers: expected a number >= 1 or 'auto', got {self.workers!r}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        if not changes:
            return config
        config = dataclasses.replace(config, **changes)  # type: ignore[arg-type]
        return check_workers(config, from_file=False) if "workers" in changes else config


NO_OVERRIDES = CommandLine()  # the file as it is
