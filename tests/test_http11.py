"""grounding/backends/http11.py against a raw TCP server that answers scripted bytes."""

from __future__ import annotations

import asyncio
import json

import pytest

from recbole_vlm4rec.formats.http11 import ConnectionPool, HTTPProtocolError

BODY = json.dumps({"choices": [{"message": {"content": "hello"}}]}).encode()


def length_reply(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n" % (len(body), extra) + body


def chunked_reply(body: bytes = BODY) -> bytes:
    chunks = [body[:7], body[7:20], body[20:]]
    encoded = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(c), c) for c in chunks)
    return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + encoded + b"0\r\nX-Trailer: y\r\n\r\n"


async def serve(replies: list[bytes], split: int = 0, close_after: bool = False, delay: float = 0.0):
    """A server answering each request (headers + Content-Length body) with the next reply after
    ``delay`` s, written in ``split``-byte pieces when set; records (connection, request) pairs."""
    seen: list[tuple[int, bytes]] = []
    connections = [0]

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections[0] += 1
        number = connections[0]
        try:
            while replies:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length"))
                seen.append((number, head + await reader.readexactly(length)))
                reply = replies.pop(0)
                await asyncio.sleep(delay)
                for start in range(0, len(reply), split or len(reply)):
                    writer.write(reply[start:start + (split or len(reply))])
                    await writer.drain()
                    await asyncio.sleep(0)
                if close_after or b"Connection: close" in reply or reply.startswith(b"HTTP/1.0"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/v1", seen


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 20))


@pytest.mark.parametrize("split", [0, 1, 5])
def test_length_and_chunked_bodies_in_any_pieces_over_one_connection(split):
    async def main():
        server, url, seen = await serve([length_reply(), chunked_reply(), length_reply(b"")], split=split)
        pool = ConnectionPool(url, {"Authorization": "Bearer k"})
        first = await pool.post("/chat/completions", b'{"a": 1}')
        second = await pool.post("/chat/completions", b'{"b": 2}')
        third = await pool.post("/chat/completions", b"{}")
        pool.close()
        server.close()
        return first, second, third, seen

    first, second, third, seen = run(main())
    assert first.status_code == 200 and first.json() == json.loads(BODY)
    assert second.content == BODY and third.content == b""
    assert [number for number, _ in seen] == [1, 1, 1]  # kept alive
    request = seen[0][1]
    assert request.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert b"\r\nAuthorization: Bearer k\r\n" in request and request.endswith(b'\r\n\r\n{"a": 1}')


def test_connection_close_and_body_until_close_open_a_new_connection():
    async def main():
        replies = [length_reply(extra=b"Connection: close\r\n"),
                   b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n" + BODY, length_reply()]
        server, url, seen = await serve(replies, close_after=False)
        pool = ConnectionPool(url, {})
        answers = [await pool.post("/x", b"1") for _ in range(3)]
        pool.close()
        server.close()
        return answers, seen

    answers, seen = run(main())
    assert [a.content for a in answers] == [BODY, BODY, BODY]
    assert [number for number, _ in seen] == [1, 2, 3]


def test_a_kept_connection_the_server_closed_is_not_reused():
    async def main():
        server, url, seen = await serve([length_reply(), length_reply()], close_after=True)
        pool = ConnectionPool(url, {})
        first = await pool.post("/x", b"1")
        await asyncio.sleep(0.2)  # the server closes its side meanwhile
        second = await pool.post("/x", b"2")
        pool.close()
        server.close()
        return first, second, seen

    first, second, seen = run(main())
    assert first.content == second.content == BODY and [n for n, _ in seen] == [1, 2]


@pytest.mark.parametrize("reply, message", [
    (b"SSH-2.0-OpenSSH_9.0\r\n\r\n", "not an HTTP response"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"short\"", "server closed the connection mid-answer"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
])
def test_broken_answers_are_protocol_errors(reply, message):
    async def main():
        server, url, _ = await serve([reply], close_after=True)
        pool = ConnectionPool(url, {})
        try:
            with pytest.raises(HTTPProtocolError, match=message):
                await pool.post("/x", b"1")
        finally:
            pool.close()
            server.close()

    run(main())


def test_a_server_gone_before_answering_is_a_connection_error():
    async def main():
        server, url, _ = await serve([b""], close_after=True)
        pool = ConnectionPool(url, {})
        try:
            with pytest.raises(ConnectionResetError, match="before answering"):
                await pool.post("/x", b"1")
        finally:
            pool.close()
            server.close()

    run(main())


def test_a_cancelled_request_closes_its_connection():
    """A deadline that cancels a request half-way must not leave its late answer to be read as
    the next request's answer."""
    async def main():
        server, url, seen = await serve([length_reply(b'{"late": true}'), length_reply()], delay=0.3)
        pool = ConnectionPool(url, {})
        late = asyncio.ensure_future(pool.post("/x", b"1"))
        while not seen:  # the server has the request and answers it in 0.3 s
            await asyncio.sleep(0.01)
        late.cancel()
        answer = await pool.post("/x", b"2")
        pool.close()
        server.close()
        return answer, seen

    answer, seen = run(main())
    assert answer.content == BODY and [number for number, _ in seen] == [1, 2]


def test_only_http_urls():
    with pytest.raises(ValueError, match="not an http"):
        ConnectionPool("ftp://x/v1", {})
