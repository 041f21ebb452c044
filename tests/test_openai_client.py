"""formats/openai_client.py, the one HTTP client of grounding and LVLM embeddings: Retry-After,
broken answers and deadlines on both transports, a fleet balanced by requests in flight, URL
lists, and the same failure handling seen from both stages."""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import pytest
from PIL import Image

from recbole_vlm4rec.encoding.lvlm import OpenAILVLMEmbedder
from recbole_vlm4rec.formats.openai_client import BadAnswer, OpenAIClient
from recbole_vlm4rec.formats.openai_messages import (base_urls, error_message, read_base_urls,
                                                     retry_after_seconds)
from recbole_vlm4rec.formats.openai_transport import TRANSPORTS
from recbole_vlm4rec.grounding.backends.base import BackendUnavailableError, GroundingRequest
from recbole_vlm4rec.grounding.backends.openai_compatible import OpenAICompatibleBackend
from recbole_vlm4rec.grounding.backends.openai_stub import (STUB_ANSWER, StubServer, completion,
                                                            embeddings_reply, request_prompt)


def text_of(content: bytes) -> str:
    try:
        return json.loads(content)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise BadAnswer(str(error)) from None


def post_all(client: OpenAIClient, bodies: list[bytes], parse=text_of) -> list:
    async def main():
        try:
            return await asyncio.gather(*(client.post("/chat/completions", body, parse) for body in bodies))
        finally:
            await client.aclose()

    return asyncio.run(asyncio.wait_for(main(), 60))


def chat_body(prompt: str) -> bytes:
    return json.dumps({"model": "stub", "messages": [{"role": "user", "content": [
        {"type": "text", "text": prompt}]}]}).encode()


def test_retry_after_in_seconds_or_as_an_http_date():
    now = time.time()
    assert retry_after_seconds("2.5") == 2.5 and retry_after_seconds("-3") == 0.0
    assert retry_after_seconds(None) is None and retry_after_seconds("soon") is None
    assert retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a past date: no wait
    later = email.utils.formatdate(now + 120, usegmt=True)
    assert 118 <= retry_after_seconds(later, now=now) <= 121


def test_a_long_retry_after_is_capped_in_both_stages():
    """A server asking for an hour (as an HTTP date) is retried after ``retry_after_max``: the
    chat client and the embeddings client are the same code."""
    def busy_first(payload, seen):
        if seen == 1:
            return 503, {"Retry-After": email.utils.formatdate(time.time() + 3600, usegmt=True)}, \
                {"error": {"message": "come back in an hour"}}
        return 200, {}, completion(STUB_ANSWER)

    def busy_first_embedding(payload, seen):
        if seen == 1:
            return 429, {"Retry-After": "3600"}, {"error": {"message": "rate limited"}}
        return embeddings_reply(payload, seen)

    with StubServer(policy=busy_first, embeddings_policy=busy_first_embedding) as server:
        started = time.monotonic()
        client = OpenAIClient(server.base_url, max_retries=2, retry_after_max=0.3)
        (outcome,) = post_all(client, [chat_body("x")])
        embedder = OpenAILVLMEmbedder(model="stub", base_url=server.base_url, max_retries=2)
        embedder.client.retry_after_max = 0.3
        request = GroundingRequest("e", Image.new("RGB", (8, 8)), "0" * 64, "y")
        (embedded,) = embedder.embed([request])
        embedder.close()
        elapsed = time.monotonic() - started
    assert outcome.value == STUB_ANSWER and embedded.vector is not None
    assert server.requests["x"] == 2 and server.requests["y"] == 2
    assert 0.5 <= elapsed < 30  # both waited the cap, neither an hour


def test_fatal_statuses_read_the_same_from_both_stages(monkeypatch):
    monkeypatch.setenv("STUB_KEY", "wrong")
    with StubServer(api_key="right") as server:
        grounding = OpenAICompatibleBackend(model="stub", base_url=server.base_url, api_key_env="STUB_KEY")
        embedding = OpenAILVLMEmbedder(model="stub", base_url=server.base_url, api_key_env="STUB_KEY")
        request = GroundingRequest("a", Image.new("RGB", (8, 8)), "0" * 64, "a")
        messages = []
        for call in (lambda: grounding.describe([request]), lambda: embedding.embed([request])):
            with pytest.raises(BackendUnavailableError) as raised:
                call()
            messages.append(str(raised.value))
        grounding.close()
        embedding.close()
    assert all("answered 401 (the endpoint rejected the API key: invalid api key)" in m
               and "$STUB_KEY" in m for m in messages)


async def _scripted_server(reply: bytes):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(reply)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize("reply", [
    b"SSH-2.0-OpenSSH_9.0\r\n\r\n",                                                  # not HTTP
    b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n{\"short\"",                      # cut off
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",                  # bad chunk
    b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nnot json at!",                    # not JSON
])
def test_answers_that_are_not_a_chat_completion_are_bad_responses(reply, transport):
    async def main():
        server, url = await _scripted_server(reply)
        client = OpenAIClient(url, max_retries=1, backoff_base=0.01, transport=transport)
        try:
            return await client.post("/chat/completions", b"{}", text_of)
        finally:
            await client.aclose()
            server.close()

    outcome = asyncio.run(asyncio.wait_for(main(), 30))
    assert outcome.value is None and outcome.error == "bad_response" and "after 2 tries" in outcome.detail


def test_requests_go_to_the_server_with_the_fewest_in_flight():
    """A fast and a slow server: round-robin would split 50/50; balancing by requests in
    flight sends the fast one most of them."""
    with StubServer(latency=0.01) as fast, StubServer(latency=0.3) as slow:
        client = OpenAIClient([fast.base_url, slow.base_url], concurrency=4)

        async def main():
            queue = asyncio.Queue()
            for number in range(60):
                queue.put_nowait(number)

            async def worker():
                while not queue.empty():
                    outcome = await client.post("/chat/completions", chat_body(f"i{queue.get_nowait()}"), text_of)
                    assert outcome.value == STUB_ANSWER

            try:
                await asyncio.gather(*(worker() for _ in range(4)))
            finally:
                await client.aclose()

        asyncio.run(asyncio.wait_for(main(), 60))
    n_fast, n_slow = sum(fast.requests.values()), sum(slow.requests.values())
    assert n_fast + n_slow == 60 and n_fast > 3 * n_slow, (n_fast, n_slow)
    assert client.report()[0].startswith(f"{fast.base_url}  {n_fast} requests, {n_fast} answered, 0 failed")


def test_a_sick_server_is_set_aside_and_its_requests_answered_elsewhere():
    def sick(payload, seen):
        return 503, {}, {"error": {"message": "overloaded"}}

    with StubServer() as healthy, StubServer(policy=sick) as unhealthy:
        client = OpenAIClient([unhealthy.base_url, healthy.base_url], concurrency=2, max_retries=2,
                              backoff_base=0.01)
        outcomes = post_all(client, [chat_body(f"item {k}") for k in range(30)])
    assert all(outcome.value == STUB_ANSWER for outcome in outcomes)
    sick_line = client.report()[0]
    assert f"{sum(unhealthy.requests.values())} requests, 0 answered" in sick_line and "http_503" in sick_line
    assert sum(unhealthy.requests.values()) <= 6  # set aside after 3 failures in a row, not hit 30 times


def test_base_url_lists_from_flags_and_files(tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert base_urls(None) == ["http://localhost:8000/v1"]
    assert base_urls(["http://a:1/v1/, http://b:2/v1", "http://a:1/v1"]) == ["http://a:1/v1", "http://b:2/v1"]
    with pytest.raises(ValueError, match="'gpu1:8000/v1': expected http"):
        base_urls("gpu1:8000/v1")
    listing = tmp_path / "servers.txt"
    listing.write_text("# the fleet\nhttp://gpu1:8000/v1\n\nhttp://gpu2:8000/v1  # second rack\n")
    assert read_base_urls(listing) == ["http://gpu1:8000/v1", "http://gpu2:8000/v1"]
    listing.write_text("http://gpu1:8000/v1\ngpu2\n")
    with pytest.raises(ValueError, match=r"servers.txt:2: base URL 'gpu2'"):
        read_base_urls(listing)


def test_error_message_prefers_the_servers_words():
    assert error_message(b'{"error": {"message": "image too large"}}') == "image too large"
    assert error_message(b'{"error": "plain"}') == "plain"
    assert error_message(b"<html>bad gateway</html>") == "<html>bad gateway</html>"
    assert error_message(b"", "Service Unavailable") == "Service Unavailable"


def test_prompt_reaches_the_server_unchanged():
    seen = []

    def echo(payload, count):
        seen.append(request_prompt(payload))
        return 200, {}, completion("ok")

    with StubServer(policy=echo) as server:
        post_all(OpenAIClient(server.base_url), [chat_body("naïve café — 漢字")])
    assert seen == ["naïve café — 漢字"]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_request_cut_off_by_its_deadline_never_gets_its_late_answer_read_as_the_next(transport):
    """The first attempt times out while the server is still answering it; the retry must get
    its own answer, not the late one on a reused connection."""
    def late_then_right(payload, seen):
        if seen == 1:
            return 200, {"X-Stub-Delay": "0.6"}, completion("late")
        return 200, {}, completion("right")

    with StubServer(policy=late_then_right) as server:
        client = OpenAIClient(server.base_url, concurrency=1, timeout=0.3, max_retries=1,
                              backoff_base=0.01, transport=transport)
        (outcome,) = post_all(client, [chat_body("x")])
    assert outcome.value == "right" and server.requests["x"] == 2
