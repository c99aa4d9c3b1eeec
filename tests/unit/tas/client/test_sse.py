"""The SSE wire format, line by line: what makes an event, what carries over, what is dropped."""

from __future__ import annotations

from tas.client.sse import Event, SseParser, parse


def test_fields_make_one_event_at_the_blank_line() -> None:
    events = list(parse(["id: 7", "event: job", 'data: {"status": "running"}', ""]))
    assert events == [Event(event="job", data='{"status": "running"}', id="7")]
    assert events[0].json() == {"status": "running"}


def test_data_lines_join_with_newlines_and_one_leading_space_is_dropped() -> None:
    (event,) = parse(["data:a", "data:  b", "data", ""])
    assert event.data == "a\n b\n"
    assert event.event == "message"  # no `event:` field


def test_comments_pings_and_unknown_fields_are_ignored() -> None:
    lines = [": ping - 2026-12-02 02:00:00", "foo: bar", "event: job", "data: 1", ""]
    assert [e.data for e in parse(lines)] == ["1"]


def test_a_blank_line_without_data_dispatches_nothing_and_resets_the_event_name() -> None:
    assert list(parse(["event: job", "", "data: x", ""])) == [Event(event="message", data="x")]


def test_the_last_id_carries_over_to_later_events_until_changed() -> None:
    lines = ["id: 1", "data: a", "", "data: b", "", "id: 3", "data: c", ""]
    assert [(e.id, e.data) for e in parse(lines)] == [("1", "a"), ("1", "b"), ("3", "c")]


def test_an_id_with_a_nul_is_ignored_and_retry_takes_digits_only() -> None:
    p = SseParser()
    for line in ["id: 5", "id: 6\0", "retry: soon", "retry: 1500", "data: x"]:
        assert p.feed(line) is None
    assert p.feed("") == Event(event="message", data="x", id="5", retry_ms=1500)


def test_an_event_cut_off_before_its_blank_line_is_never_dispatched() -> None:
    # A stream dropped mid-event must not hand on half a job.
    assert [e.data for e in parse(["data: whole", "", "id: 9", 'data: {"half"'])] == ["whole"]


def test_line_endings_are_stripped() -> None:
    assert [e.data for e in parse(["data: x\r", "\r"])] == ["x"]
