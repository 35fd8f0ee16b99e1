"""The sticky layer's parts on their own: the signer and the bounds of the in-process store
(SPEC §2: honoured cookies are only ours; both stores are bounded by bytes and entries)."""

from __future__ import annotations

import re
import secrets

import pytest

from balancer.sticky.signing import VALUE_LENGTH, CookieSigner
from balancer.sticky.store import DEFAULT_MAX_BYTES, DEFAULT_MAX_ENTRIES, MemoryStore, entry_bytes


def test_issued_values_verify_and_look_like_ours() -> None:
    signer = CookieSigner(b"s3cret")
    values = {signer.issue() for _ in range(200)}
    assert len(values) == 200  # random ids
    for value in values:
        assert len(value) == VALUE_LENGTH == 47
        assert re.fullmatch(r"[A-Za-z0-9_-]{24}\.[A-Za-z0-9_-]{22}", value)
        assert signer.verify(value.encode())


def test_anything_we_did_not_sign_fails() -> None:
    signer = CookieSigner(b"s3cret")
    value = signer.issue()
    cookie_id, mac = value.split(".")
    flipped = ("B" if mac[0] == "A" else "A") + mac[1:]
    forged = [
        secrets.token_urlsafe(18),  # an unsigned id, as issued before signing
        f"{cookie_id}.{flipped}",  # the right shape, a bad MAC
        f"{secrets.token_urlsafe(18)}.{mac}",  # our MAC on another id
        CookieSigner(b"another").issue(),  # signed, with another secret
        value + "x",
        value[:-1],
        value.replace(".", "-"),
        "x" * 4096,
        "",
    ]
    for bad in forged:
        assert not signer.verify(bad.encode()), bad
    assert not signer.verify(value.encode()[:-2] + "é".encode())  # non-ASCII, right length
    with pytest.raises(ValueError):
        CookieSigner(b"")


def test_the_store_is_bounded_by_bytes_as_well_as_entries() -> None:
    store = MemoryStore(60.0, max_entries=1000, max_bytes=1000)
    keys = [f"header:{i:04d}" + "k" * 40 for i in range(100)]  # 51 + 2 bytes an entry
    for key in keys:
        store.set_now(key, "b0")
        assert store.bytes <= 1000 and len(store) <= 1000
    assert len(store) == 1000 // 53 and store.bytes == len(store) * 53
    assert store.get_now(keys[-1]) == "b0" and store.get_now(keys[0]) is None  # LRU went first
    store.set_now(keys[-1], "b1-longer")  # a replaced entry is counted once, at its new size
    assert store.bytes == (len(store) - 1) * 53 + entry_bytes(keys[-1], "b1-longer")
    assert entry_bytes("é", "b0") == 4  # UTF-8 bytes, not characters


def test_the_entry_bound_still_holds_and_expiry_gives_bytes_back() -> None:
    now = [0.0]
    store = MemoryStore(10.0, max_entries=3, clock=lambda: now[0])
    for key in ("a", "b", "c", "d"):
        store.set_now(key, "b0")
    assert len(store) == 3 and store.get_now("a") is None and store.bytes == 9
    now[0] = 11.0
    assert store.get_now("b") is None and store.bytes == 6  # expired: its bytes are freed


def test_many_distinct_forged_keys_stay_within_the_default_bounds() -> None:
    store = MemoryStore(1800.0)
    assert (store.max_entries, store.max_bytes) == (DEFAULT_MAX_ENTRIES, DEFAULT_MAX_BYTES)
    small = MemoryStore(1800.0, max_bytes=1 << 20)
    for i in range(2000):  # 8 MB of 4 KB keys offered to a 1 MB store
        small.set_now(f"header:{i:06d}" + "x" * 4090, "b0")
    assert small.bytes <= 1 << 20 and len(small) == (1 << 20) // (13 + 4090 + 2)
