"""The data plane between API processes and shard actors: one TCP connection per use.

Ray places, supervises, restarts and names the shard actors; it does not carry their traffic.
Measured on this 2-core box, one Ray actor call costs the calling process about 0.5 ms of CPU
and 0.9 ms of wall time (`python -m loadtests.wire_bench --ray`: 478-548 us, 2026-12-02), as
much as the rest of an update's whole path, and at 2,000 updates/s the calls alone took most of
a core. So each shard actor serves its host on a
socket of its own, and API processes send the same msgpack frames (`engine.protocol`) over it:
a call costs a send and a receive.

Framing: a 4-byte big-endian length, then the msgpack payload. A connection opens with `Hello`
(the shard's token, learnt from the actor through Ray, so a caller must be able to reach the
cluster to reach a shard) answered by `Welcome`; then requests and replies alternate, one at a
time: a batching lane (or a gateway's long-poll) owns each connection, so no request ids are
needed. Any error closes the connection; the caller reconnects, asking the actor (through Ray)
for its address again, since a restarted actor listens somewhere new.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import os
import secrets
import socket
import socketserver
import struct
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass

from engine.domain.errors import Unavailable
from engine.host import ShardHost
from engine.protocol import (
    AnyCommand,
    CallReply,
    CallRequest,
    Channel,
    Feed,
    Hello,
    PollRequest,
    Welcome,
    pack,
    unpack_call_reply,
    unpack_feed,
    unpack_hello,
    unpack_request,
    unpack_welcome,
)

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
MAX_FRAME = 256 * 1024 * 1024
CONNECT_TIMEOUT_S = 10.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where a shard listens, and the token it expects: TCP on its node's address, and a Unix
    socket for callers on the same node (no TCP stack per frame)."""

    host: str
    port: int
    token: str
    path: str | None = None


# -- the shard's side (threads, in the actor process) --------------------------------------------


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:], n - got)
        if k == 0:
            raise ConnectionError("peer closed")
        got += k
    return bytes(buf)


def _recv_frame(sock: socket.socket) -> bytes:
    (n,) = _LENGTH.unpack(_recv_exactly(sock, 4))
    if n > MAX_FRAME:
        raise ConnectionError(f"frame of {n} bytes")
    return _recv_exactly(sock, n)


def _send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LENGTH.pack(len(payload)) + payload)


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sock: socket.socket = self.request
        if sock.family != socket.AF_UNIX:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        host = self.server.host
        try:
            hello = unpack_hello(_recv_frame(sock))
            if not hmac.compare_digest(hello.token, self.server.token):
                log.warning("refused a connection with a wrong token from %s", self.client_address)
                return
            _send_frame(sock, pack(Welcome(host.shard.cfg.index, host.epoch)))
            while True:
                match unpack_request(_recv_frame(sock)):
                    case CallRequest(commands=commands, channel=channel):
                        reply = pack(host.call(commands, channel))
                    case PollRequest(channel=channel, timeout_s=timeout_s):
                        reply = pack(host.poll(channel, timeout_s))
                _send_frame(sock, reply)
        except (ConnectionError, OSError):
            return
        except Exception:
            log.exception("shard channel: closing a connection after an error")


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, bind: str, host: ShardHost, token: str) -> None:
        self.host = host
        self.token = token
        super().__init__((bind, 0), _Handler)


class _UnixServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, host: ShardHost, token: str) -> None:
        self.host = host
        self.token = token
        super().__init__(path, _Handler)


class ChannelServer:
    """Serves a ShardHost on a TCP port of `bind` (the node's address) and on a Unix socket
    in `unix_dir` (private to this user), on threads."""

    def __init__(self, host: ShardHost, bind: str, unix_dir: str | None = None) -> None:
        self.token = secrets.token_urlsafe(24)
        self._servers: list[socketserver.BaseServer] = [_Server(bind, host, self.token)]
        self._path: str | None = None
        if unix_dir is not None:
            os.makedirs(unix_dir, mode=0o700, exist_ok=True)
            path = os.path.join(unix_dir, f"shard-{host.shard.cfg.index}-{os.getpid()}.sock")
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            self._servers.append(_UnixServer(path, host, self.token))
            os.chmod(path, 0o600)
            self._path = path
        for server in self._servers:
            threading.Thread(
                target=server.serve_forever, name="shard-channel", daemon=True
            ).start()

    def endpoint(self, advertise: str) -> Endpoint:
        tcp = self._servers[0]
        assert isinstance(tcp, _Server)
        port: int = tcp.server_address[1]
        return Endpoint(advertise, port, self.token, self._path)

    def close(self) -> None:
        for server in self._servers:
            server.shutdown()
            server.server_close()
        if self._path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._path)


# -- the API process's side (asyncio) -------------------------------------------------------------

Resolver = Callable[[int], Awaitable[Endpoint]]


class _Connection:
    """One connection to one shard, used by one caller at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, endpoint: Endpoint, local: bool) -> tuple[_Connection, Welcome]:
        async with asyncio.timeout(CONNECT_TIMEOUT_S):
            if local and endpoint.path is not None:
                reader, writer = await asyncio.open_unix_connection(endpoint.path)
            else:
                reader, writer = await asyncio.open_connection(endpoint.host, endpoint.port)
                sock = writer.get_extra_info("socket")
                if sock is not None:
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn = cls(reader, writer)
            welcome = unpack_welcome(await conn.request(pack(Hello(endpoint.token))))
        return conn, welcome

    async def request(self, payload: bytes) -> bytes:
        # One write, one send: a frame is small, and each write of a stream is a syscall.
        self.writer.write(_LENGTH.pack(len(payload)) + payload)
        (n,) = _LENGTH.unpack(await self.reader.readexactly(4))
        if n > MAX_FRAME:
            raise ConnectionError(f"frame of {n} bytes")
        return await self.reader.readexactly(n)

    def close(self) -> None:
        self.writer.close()


class SocketTransport:
    """`engine.client.Transport` over the shards' own sockets; `resolve` finds a shard's
    endpoint (through Ray) when a connection is (re)made."""

    def __init__(self, n_shards: int, resolve: Resolver, node: str | None = None) -> None:
        self.n_shards = n_shards
        self._resolve = resolve
        self._node = node  # this process's node address: same-node shards use Unix sockets
        self._calls: list[_Connection | None] = [None] * n_shards
        self._polls: list[_Connection | None] = [None] * n_shards

    async def _connect(self, shard: int) -> _Connection:
        try:
            endpoint = await self._resolve(shard)
            conn, welcome = await _Connection.open(endpoint, endpoint.host == self._node)
        except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
            raise Unavailable(f"shard {shard} is restarting; retry shortly ({e})") from e
        if welcome.index != shard:
            conn.close()
            raise Unavailable(f"shard {shard}'s address answered as shard {welcome.index}")
        return conn

    async def _request(
        self, pool: list[_Connection | None], shard: int, payload: bytes
    ) -> bytes:
        conn = pool[shard]
        if conn is None:
            conn = pool[shard] = await self._connect(shard)
        try:
            return await conn.request(payload)
        except BaseException as e:
            # Whatever happened (a dead peer, a timeout, a cancel mid-frame), the connection's
            # framing can no longer be trusted: drop it; the next request reconnects.
            pool[shard] = None
            conn.close()
            if isinstance(e, (OSError, asyncio.IncompleteReadError, ConnectionError)):
                raise Unavailable(f"shard {shard} is restarting; retry shortly ({e!r})") from e
            raise

    async def call(
        self, shard: int, commands: Sequence[AnyCommand], channel: Channel | None
    ) -> CallReply:
        reply = await self._request(
            self._calls, shard, pack(CallRequest(list(commands), channel))
        )
        return unpack_call_reply(reply)

    async def poll(self, shard: int, channel: Channel, timeout_s: float) -> Feed:
        try:
            reply = await self._request(self._polls, shard, pack(PollRequest(channel, timeout_s)))
        except Unavailable:
            await asyncio.sleep(0.2)  # a shard being restarted: do not spin
            raise
        return unpack_feed(reply)

    async def close(self) -> None:
        for pool in (self._calls, self._polls):
            for i, conn in enumerate(pool):
                if conn is not None:
                    conn.close()
                    pool[i] = None
            with contextlib.suppress(Exception):
                await asyncio.sleep(0)
