"""The Date field's value (RFC 9110 5.6.7), as aiohttp's server writes it: formatted once a
second (`aiohttp.helpers.rfc822_formatted_time`, not re-exported by aiohttp)."""

from __future__ import annotations

from aiohttp.helpers import rfc822_formatted_time as http_date

__all__ = ["http_date"]
