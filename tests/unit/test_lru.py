"""The one cache helper: bounded, least recently used evicted first, ``make`` called once per live key."""

import pytest

from lora_math.lru import LRU


def test_evicts_the_least_recently_used():
    cache = LRU(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "a" is now the most recent
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3 and len(cache) == 2


def test_get_or_make_makes_once_while_cached():
    calls = []
    cache = LRU(1)

    def make():
        calls.append(1)
        return len(calls)

    assert cache.get_or_make("k", make) == 1 and cache.get_or_make("k", make) == 1 and calls == [1]
    cache.get_or_make("other", make)
    assert cache.get_or_make("k", make) == 3  # evicted by "other", made again


def test_pop_clear_and_size_check():
    cache = LRU(3)
    cache.put("a", 1)
    assert cache.pop("a") == 1 and cache.pop("a", "gone") == "gone"
    cache.put("b", 2)
    cache.clear()
    assert len(cache) == 0 and cache.get("b") is None
    with pytest.raises(ValueError, match="size must be at least 1"):
        LRU(0)
