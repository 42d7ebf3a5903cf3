from broker.transport.limits import ConnectionSlots, Strikes, TokenBucket, origin_allowed


def test_token_bucket_allows_burst_then_rate():
    bucket = TokenBucket(rate=4, burst=2, now=0)
    assert [bucket.take(0) for _ in range(3)] == [True, True, False]
    assert bucket.take(0.25) and not bucket.take(0.25)  # one token per 1/rate seconds
    assert [bucket.take(100) for _ in range(3)] == [True, True, False]  # refilled only up to the burst
    assert [bucket.take(100 + i / 4) for i in range(1, 9)] == [True] * 8


def test_strikes_within_window():
    strikes = Strikes(limit=3, window=10)
    assert not strikes.strike(0) and not strikes.strike(5)
    assert not strikes.strike(11)  # the first fell out of the window
    assert strikes.strike(12)


def test_origin_rules():
    assert origin_allowed(None, "broker:8080", ())
    assert origin_allowed("http://broker:8080", "broker:8080", ())
    assert not origin_allowed("https://evil.example", "broker:8080", ())
    assert not origin_allowed("null", "broker:8080", ())
    assert origin_allowed("https://app.example.com", "broker", ("https://*.example.com",))
    assert origin_allowed("https://anything", "broker", ("*",))


def test_connection_slots_bound_the_total_and_each_address():
    slots = ConnectionSlots(max_total=3, max_per_address=2, unlimited=("10.0.0.9",))
    assert slots.take("a") is None and slots.take("a") is None
    assert slots.take("a") == "address"  # refused: nothing counted
    assert slots.from_address("a") == 2 and slots.total == 2
    assert slots.take("b") is None
    assert slots.take("c") == "total"
    slots.give_back("a")
    assert slots.take("c") is None and slots.total == 3
    for address in ("a", "b", "c"):
        slots.give_back(address)
    assert slots.total == 0 and [slots.from_address(a) for a in "abc"] == [0, 0, 0]


def test_connection_slots_let_trusted_proxies_past_the_address_bound():
    slots = ConnectionSlots(max_total=5, max_per_address=1, unlimited=("127.0.0.1",))
    assert [slots.take("127.0.0.1") for _ in range(6)] == [None] * 5 + ["total"]
