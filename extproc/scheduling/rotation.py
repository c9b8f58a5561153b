"""One tenant's queue, in turns between the clients that share it.

Tenants the policy does not name share one tenant (``unknown``) so that a client
rotating ids gets no more than one tenant's share. Inside that shared tenant requests
take turns by the id each client sent: one unnamed client's backlog does not put
another unnamed client behind all of it. A named tenant is one client (``""``), and its
queue is plain arrival order.

A client of a shared tenant may also queue only while it holds fewer requests than the
queue has free places (the dynamic threshold of Choudhury and Hahne, 1998): one flooding
client stops at half the queue, two at a third each, so a newcomer always finds room
instead of the 429s a full shared queue would give it. A client sending many ids still
fills the queue, as it would without turns: it is one tenant, to the policy. (The
tenant's share of the engine's slots is split between its ids too: ``shares.py``.)
"""

from __future__ import annotations

from collections import OrderedDict

from fairlane.extproc.scheduling.base import QueuedRequest
from fairlane.extproc.scheduling.fifo import RemovableQueue


class ClientTurns:
    """A queue with ``RemovableQueue``'s interface that serves its clients in turn.

    Only clients with a request queued hold an entry, so its size is bounded by the
    tenant's queue bound, not by how many clients there are.
    """

    def __init__(self) -> None:
        self._clients: OrderedDict[str, RemovableQueue] = OrderedDict()  # next turn first
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def has_room_for(self, client: str, limit: int) -> bool:
        """May ``client`` queue one more with the tenant's queue bounded at ``limit``?
        A named tenant's one client: while the queue is under the bound; a client of a
        shared tenant: while it holds fewer than the places still free."""
        if not client:
            return self._len < limit
        return self.depth(client) < limit - self._len

    def depth(self, client: str) -> int:
        queue = self._clients.get(client)
        return 0 if queue is None else len(queue)

    def append(self, request: QueuedRequest) -> None:
        queue = self._clients.get(request.client)
        if queue is None:
            queue = self._clients[request.client] = RemovableQueue()  # last in turn
        queue.append(request)
        self._len += 1

    def discard(self, request: QueuedRequest) -> bool:
        queue = self._clients.get(request.client)
        if queue is None or not queue.discard(request):
            return False
        self._len -= 1
        if not queue:
            del self._clients[request.client]
        return True

    def peek(self) -> QueuedRequest | None:
        if not self._clients:
            return None
        return next(iter(self._clients.values())).peek()  # no client's queue is empty

    def popleft(self) -> QueuedRequest | None:
        if not self._clients:
            return None
        client, queue = next(iter(self._clients.items()))
        request = queue.popleft()
        self._len -= 1
        if queue:
            self._clients.move_to_end(client)  # its next request waits for the others'
        else:
            del self._clients[client]
        return request
