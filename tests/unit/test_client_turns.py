"""Turns between the clients of a shared tenant (``extproc/scheduling/rotation.py``)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from fairlane.extproc.scheduling.base import QueuedRequest
from fairlane.extproc.scheduling.rotation import ClientTurns


def request(client: str) -> QueuedRequest:
    return QueuedRequest("unknown", 1.0, client=client)


def test_clients_take_turns_and_each_keeps_its_order() -> None:
    turns = ClientTurns()
    noisy = [request("noisy") for _ in range(5)]
    for r in noisy:
        turns.append(r)
    quiet = request("quiet")
    turns.append(quiet)
    assert turns.peek() is noisy[0]
    order = [turns.popleft() for _ in range(len(turns))]
    assert order == [noisy[0], quiet, *noisy[1:]]
    assert turns.popleft() is None and turns.peek() is None and len(turns) == 0


def test_a_removed_request_gives_up_its_place_and_an_emptied_client_its_turn() -> None:
    turns = ClientTurns()
    a1, a2, b1, c1 = request("a"), request("a"), request("b"), request("c")
    for r in (a1, a2, b1, c1):
        turns.append(r)
    assert turns.discard(b1) and not turns.discard(b1)
    assert (len(turns), turns.depth("b"), turns.depth("a")) == (3, 0, 2)
    assert [turns.popleft() for _ in range(3)] == [a1, c1, a2]


def test_a_named_tenant_is_one_client_bounded_by_the_whole_queue() -> None:
    turns = ClientTurns()
    for _ in range(9):
        assert turns.has_room_for("", 10)
        turns.append(request(""))
    assert turns.has_room_for("", 10)
    turns.append(request(""))
    assert not turns.has_room_for("", 10)


def test_a_flooding_client_leaves_room_for_a_newcomer() -> None:
    turns = ClientTurns()
    while turns.has_room_for("noisy", 10):
        turns.append(request("noisy"))
    assert len(turns) == 5  # it may hold fewer than the places left free
    while turns.has_room_for("other", 10):
        turns.append(request("other"))
    assert (turns.depth("noisy"), turns.depth("other")) == (5, 3)
    assert turns.has_room_for("newcomer", 10)  # 2 places free


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("push"), st.sampled_from("abcd")),
        st.tuples(st.just("pop")),
        st.tuples(st.just("remove"), st.integers(0, 100)),
    ),
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(ops=_ops)
def test_no_client_waits_more_than_one_turn_of_each_other(ops: list[tuple[Any, ...]]) -> None:
    """Between a client joining (or being served) and its next turn, every other client
    is served at most once; nothing is lost, duplicated or reordered within a client."""
    turns = ClientTurns()
    queued: dict[QueuedRequest, None] = {}  # insertion-ordered: arrival order
    pushed: list[QueuedRequest] = []
    served_since: dict[str, Counter[str]] = {}  # waiting client -> others served since
    for op in ops:
        match op:
            case ("push", client):
                r = request(client)
                turns.append(r)
                queued[r] = None
                pushed.append(r)
                served_since.setdefault(client, Counter())
            case ("pop",):
                r = turns.popleft()
                if r is None:
                    assert not queued
                    continue
                assert r is next(q for q in queued if q.client == r.client)
                del queued[r]
                for client, others in served_since.items():
                    if client != r.client:
                        others[r.client] += 1
                        assert others[r.client] <= 1, (client, r.client)
                if turns.depth(r.client):
                    served_since[r.client] = Counter()
                else:
                    del served_since[r.client]
            case ("remove", i):
                if pushed:
                    r = pushed[i % len(pushed)]
                    assert turns.discard(r) == (r in queued)
                    if queued.pop(r, 0) is None and not turns.depth(r.client):
                        del served_since[r.client]
        assert len(turns) == len(queued)
        assert all(turns.depth(c) == n for c, n in Counter(q.client for q in queued).items())
        head = turns.peek()
        assert head is None if not queued else head in queued
