"""The cluster DNS on loopback: a headless Service's name answers the Ready builders' addresses.

A real DNS server (dnslib's, UDP on loopback) that HAProxy's ``resolvers`` section queries
as it would query kube-dns: an A query for the Service's name gets one record per Ready
builder (none once no builder is Ready: NXDOMAIN, as CoreDNS answers a headless Service
without endpoints). Anything else is NXDOMAIN.
"""

from __future__ import annotations

import threading

from dnslib import QTYPE, RCODE, RR, A, DNSRecord
from dnslib.server import BaseResolver, DNSHandler, DNSLogger, DNSServer


class _Answers(BaseResolver):  # type: ignore[misc]
    def __init__(self, name: str) -> None:
        self.name = name.rstrip(".") + "."
        self.addresses: tuple[str, ...] = ()
        self.queries = 0
        self.lock = threading.Lock()

    def resolve(self, request: DNSRecord, handler: DNSHandler) -> DNSRecord:
        reply = request.reply()
        question = request.q
        with self.lock:
            self.queries += 1
            addresses = self.addresses
        if str(question.qname) != self.name or not addresses:
            reply.header.rcode = RCODE.NXDOMAIN
        elif question.qtype in (QTYPE.A, QTYPE.ANY):
            for address in addresses:
                reply.add_answer(RR(question.qname, QTYPE.A, rdata=A(address), ttl=1))
        return reply  # AAAA and the rest: NOERROR, no answer


class ServiceDNS:
    """A DNS server for one name on ``127.0.0.1:<port>``; :meth:`publish` sets its addresses."""

    def __init__(self, name: str) -> None:
        self._answers = _Answers(name)
        quiet = DNSLogger(log="-request,-reply,-truncated,-recv,-send,-data", prefix=False)  # errors only
        self._server = DNSServer(self._answers, address="127.0.0.1", port=0, logger=quiet)
        self.port: int = self._server.server.server_address[1]

    def start(self) -> None:
        self._server.start_thread()

    def stop(self) -> None:
        self._server.stop()
        self._server.server.server_close()

    def publish(self, *addresses: str) -> None:
        """The Ready builders' addresses from now on (in this order)."""
        with self._answers.lock:
            self._answers.addresses = tuple(addresses)

    @property
    def queries(self) -> int:
        with self._answers.lock:
            return self._answers.queries
