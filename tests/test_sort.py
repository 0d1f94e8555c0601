"""The engine's in-memory key sort (csrc/ps_sort.c) against Python's own ordering.

The sort is a byte-wise radix sort over 8-byte chunks cached in the index, which finishes short
ranges with a comparison sort after skipping their common prefix, and falls back to that
comparison sort past a bound on nested splits. Each test below aims at one of those paths:
keys sharing long prefixes (member DNs), keys ending inside a chunk or exactly at its end,
embedded NUL bytes (zero padding must not make "a" equal "a\\0"), equal keys (input order must
survive: the merge relies on it for first/last-row-wins), and deep nesting.

The reference is ``sorted`` on (key, input index): Python compares bytes as memcmp, then length.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prepsync import _cleanse

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def reference_order(keys: list[bytes]) -> list[int]:
    return sorted(range(len(keys)), key=lambda i: (keys[i], i))


# Few distinct bytes (NUL included) so that keys collide, share prefixes and end inside chunks.
small_alphabet = st.binary(max_size=20).map(lambda raw: bytes(b % 4 for b in raw))
prefixes = st.lists(small_alphabet, min_size=1, max_size=4).map(
    # Long shared prefixes of every length modulo 8, like the group DN in a member key.
    lambda parts: [p * (1 + len(p) % 9) for p in parts]
)


@st.composite
def key_lists(draw: st.DrawFn) -> list[bytes]:
    heads = draw(prefixes)
    tails = draw(st.lists(small_alphabet, max_size=300))
    return [draw(st.sampled_from(heads)) + tail for tail in tails]


@SETTINGS
@given(key_lists())
def test_sort_matches_reference(keys: list[bytes]) -> None:
    assert _cleanse.sort_order(keys) == reference_order(keys)


@SETTINGS
@given(st.lists(st.binary(max_size=40), max_size=200))
def test_sort_matches_reference_on_any_bytes(keys: list[bytes]) -> None:
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_equal_keys_keep_input_order() -> None:
    keys = [b"CN=GRP-7,OU=Groups,DC=corp" * 3] * 500 + [b"x"] * 40 + [b""] * 40 + [b"a\x00"] * 40
    random.Random(3).shuffle(keys)
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_zero_padding_is_not_a_key_byte() -> None:
    # Every key ends at a different place inside or at the end of one chunk; with NULs they
    # would all look alike once zero-padded to 8 bytes.
    keys = [b"p" * 16 + b"\x00" * n for n in range(17)] * 3
    random.Random(5).shuffle(keys)
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_member_like_keys() -> None:
    rng = random.Random(7)
    groups = [
        f"CN=GRP-{dept}-{n:07d},OU=Groups,OU=Sydney,DC=corp,DC=example"
        for dept in ("FAC", "IT", "HR")
        for n in range(60)
    ]
    users = [
        f"CN=Müller\\, Jürgen {n:07d},OU=Users,OU=München,DC=corp,DC=example" for n in range(400)
    ]
    keys = []
    for group in groups:
        for user in rng.sample(users, rng.randint(1, 40)):
            # Two key columns as the engine encodes them: each closed by 0x00 0x00.
            keys.append(group.encode() + b"\x00\x00" + user.encode() + b"\x00\x00")
    keys += keys[:50]  # duplicate pairs
    rng.shuffle(keys)
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_deeply_nested_splits_fall_back_correctly() -> None:
    # At every byte position one large bucket carries on and a few keys split off, so the
    # radix recursion nests once per byte, well past its bound on nesting.
    keys = []
    for depth in range(120):
        for branch in range(4):
            keys.append(b"a" * depth + bytes([ord("b") + branch]) + b"tail" * branch)
    keys += [b"a" * 130] * 20
    random.Random(11).shuffle(keys)
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_very_long_shared_prefix() -> None:
    # Steps over a shared prefix chunk by chunk must not cost stack per chunk.
    prefix = b"OU=Very,OU=Deep," * 16384  # 256 KiB
    keys = [prefix + bytes([i % 7]) * (i % 5) for i in range(100)] + [prefix[:-1]] * 3
    random.Random(17).shuffle(keys)
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_large_random_input() -> None:
    rng = random.Random(13)
    heads = [bytes(rng.randrange(256) for _ in range(rng.randrange(0, 30))) for _ in range(50)]
    keys = [
        rng.choice(heads) + bytes(rng.randrange(3) for _ in range(rng.randrange(0, 12)))
        for _ in range(30_000)
    ]
    assert _cleanse.sort_order(keys) == reference_order(keys)


def test_bytes_shared_from_any_offset_of_a_chunk_with_a_key_ending_among_them() -> None:
    # More keys than the comparison-sort cutoff share a run of bytes that starts at each offset
    # of a chunk (after a differing head); one key ends at each point inside that run, where
    # its digit is "ended", not the shared byte, and others hold NULs where it ends. The radix
    # steps over the shared bytes in one pass and must stop where the first key ends.
    rng = random.Random(19)
    shared = b"CN=GRP-FAC-0470855,OU=Groups\x00\x00CN="
    for head in range(9):
        for cut in range(0, len(shared) + 1, 3):
            keys = []
            for first in (b"a", b"b"):
                start = first + b"h" * head
                keys += [
                    start + shared + bytes(rng.randrange(3) for _ in range(5)) for _ in range(40)
                ]
                keys += [start + shared[:cut], start + shared[:cut] + b"\x00", start + shared[:cut]]
            rng.shuffle(keys)
            assert _cleanse.sort_order(keys) == reference_order(keys), (head, cut)
