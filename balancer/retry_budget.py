"""The retry budget (SPEC §2 `retry_budget`): a failing backend cannot set off a retry storm."""

from __future__ import annotations


class RetryBudget:
    """Retries in flight at most `percent` of requests in flight, but `minimum` always."""

    def __init__(self, percent: float, minimum: int) -> None:
        self.fraction = percent / 100.0
        self.minimum = minimum
        self.in_flight = 0

    def allows(self, requests_in_flight: int) -> bool:
        return self.in_flight < max(self.minimum, self.fraction * requests_in_flight)
