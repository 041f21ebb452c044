"""The openai backend against an OpenAI-compatible stub server on 127.0.0.1 started by the test."""

from __future__ import annotations

import base64
import io
import re
import socket
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from grounding_fakes import description_rows, make_project_home
from recbole_vlm4rec import cli
from recbole_vlm4rec.grounding.backends.base import BackendUnavailableError, GroundingRequest
from recbole_vlm4rec.grounding.backends.openai_compatible import OpenAICompatibleBackend
from recbole_vlm4rec.grounding.backends.openai_stub import STUB_ANSWER, StubServer, completion, request_prompt
from recbole_vlm4rec.grounding.items import GroundingItem
from recbole_vlm4rec.grounding.prompts import load_prompt
from recbole_vlm4rec.grounding.run import run_grounding
from recbole_vlm4rec.grounding.store import DescriptionStore


def scripted_policy(payload, seen):
    """Behaviour chosen by the prompt text, so one server covers every case."""
    case = request_prompt(payload)
    if case == "429-then-ok":
        return (429, {"Retry-After": "0"}, {"error": {"message": "slow down"}}) if seen == 1 else \
            (200, {}, completion(STUB_ANSWER))
    if case == "always-500":
        return 500, {}, {"error": {"message": "engine crashed"}}
    if case == "bad-request":
        return 400, {}, {"error": {"message": "image too large"}}
    if case == "slow":
        return 200, {"X-Stub-Delay": "1.0"}, completion(STUB_ANSWER)
    if case == "malformed":
        return 200, {}, b'{"choices": [ this is not json'
    if case == "no-choices":
        return 200, {}, {"object": "chat.completion", "choices": []}
    if case in ("malformed-then-ok", "no-choices-then-ok") and seen == 1:
        return 200, {}, b'{"choices": [' if case.startswith("malformed") else {"choices": []}
    if case == "trickle":
        return 200, {"X-Stub-Trickle": "0.5"}, completion(STUB_ANSWER)
    if case == "empty":
        return 200, {}, completion("")
    if case == "parts":
        return 200, {}, completion([{"type": "text", "text": "in "}, {"type": "text", "text": "parts"}])
    return 200, {}, completion(STUB_ANSWER)


def request(case: str) -> GroundingRequest:
    return GroundingRequest(case, Image.new("RGB", (16, 16), (10, 200, 30)), "0" * 64, case)


def backend(server: StubServer, **options) -> OpenAICompatibleBackend:
    options = {"model": "stub", "base_url": server.base_url, "backoff_base": 0.01, "max_retries": 2,
               "timeout": 5.0, **options}
    return OpenAICompatibleBackend(**options)


def test_success_retry_and_permanent_failures():
    with StubServer(policy=scripted_policy) as server:
        client = backend(server, concurrency=2)
        client.preflight()
        cases = ["ok", "429-then-ok", "always-500", "bad-request", "malformed", "no-choices", "empty", "parts",
                 "malformed-then-ok", "no-choices-then-ok"]
        outputs = {out.item_id: out for out in client.describe([request(case) for case in cases])}
        client.close()
    assert outputs["ok"].text == STUB_ANSWER and outputs["ok"].ok
    assert outputs["429-then-ok"].text == STUB_ANSWER
    assert server.requests["429-then-ok"] == 2
    assert outputs["always-500"].error == "http_500" and "engine crashed" in outputs["always-500"].detail
    assert server.requests["always-500"] == 3  # 1 + max_retries
    assert outputs["bad-request"].error == "http_400" and server.requests["bad-request"] == 1  # no retry
    # an answer that is not a chat completion is retried like a 5xx, bounded by max_retries
    assert outputs["malformed"].error == "bad_response" and outputs["no-choices"].error == "bad_response"
    assert server.requests["malformed"] == server.requests["no-choices"] == 3
    assert outputs["malformed-then-ok"].text == outputs["no-choices-then-ok"].text == STUB_ANSWER
    assert outputs["empty"].text == "" and not outputs["empty"].ok and outputs["empty"].error is None
    assert outputs["parts"].text == "in parts"


def test_timeout_is_retried_then_recorded():
    with StubServer(policy=scripted_policy) as server:
        client = backend(server, timeout=0.2, max_retries=1)
        (output,) = client.describe([request("slow")])
        client.close()
    assert output.error == "timeout" and "2 tries" in output.detail
    assert server.requests["slow"] == 2


def test_timeout_is_a_deadline_for_the_whole_request():
    """A server that sends one byte every half second never times out a single read: the
    deadline covers the whole answer."""
    with StubServer(policy=scripted_policy) as server:
        client = backend(server, timeout=1.0, max_retries=0)
        started = time.monotonic()
        (output,) = client.describe([request("trickle")])
        elapsed = time.monotonic() - started
        client.close()
    assert output.error == "timeout" and "within 1 s" in output.detail
    assert elapsed < 30  # the whole body would take over 100 s at this pace


def test_api_key_is_sent_and_a_wrong_one_stops_early(monkeypatch):
    with StubServer(api_key="sesame") as server:
        monkeypatch.setenv("MY_KEY", "sesame")
        client = backend(server, api_key_env="MY_KEY")
        client.preflight()
        assert client.describe([request("ok")])[0].ok
        monkeypatch.setenv("MY_KEY", "wrong")
        with pytest.raises(BackendUnavailableError, match="401.*MY_KEY"):
            backend(server, api_key_env="MY_KEY").preflight()
        with pytest.raises(BackendUnavailableError, match="401"):
            backend(server, api_key_env="MY_KEY").describe([request("ok")])


def test_unknown_model_and_unreachable_endpoint_fail_before_any_item():
    with StubServer(models=("served-model",)) as server:
        with pytest.raises(BackendUnavailableError, match="does not serve model 'stub'.*served-model"):
            backend(server).preflight()
    url = f"http://127.0.0.1:{_free_port()}/v1"
    with pytest.raises(BackendUnavailableError, match="cannot reach"):
        OpenAICompatibleBackend(model="m", base_url=url).preflight()
    # without the preflight, consecutive connection failures stop the run instead of failing each item
    dead = OpenAICompatibleBackend(model="m", base_url=url, max_retries=0, abort_after=3)
    assert dead.describe([request("a"), request("b")])[1].error == "connection_error"
    with pytest.raises(BackendUnavailableError, match=r"3 requests \(items\) in a row"):
        dead.describe([request("c")])
    dead.close()


def close_once_sent(server: StubServer, case: str):
    """Describe ``case`` on a worker thread, close the backend (Ctrl-C) once the server has the
    request; the item's output."""
    client = backend(server, backoff_base=30.0, max_retries=5)
    outputs = []
    worker = threading.Thread(target=lambda: outputs.extend(client.describe([request(case)])))
    worker.start()
    while server.requests[case] < 1:
        time.sleep(0.01)
    client.close()  # requests in flight get 2 s to finish
    worker.join(timeout=20)
    assert not worker.is_alive()
    return outputs[0]


def test_close_stops_items_that_are_waiting_to_retry():
    """Ctrl-C closes the backend: requests in their backoff sleep give up instead of retrying."""
    with StubServer(policy=scripted_policy) as server:
        output = close_once_sent(server, "always-500")
    assert output.error == "interrupted" and server.requests["always-500"] == 1


def test_close_while_a_request_is_in_flight_stops_its_retries():
    """Ctrl-C lands while the server is still answering (0.5 s): the 500 that then arrives is not
    retried and the item is recorded as interrupted, not as the server's failure."""
    def slow_500(payload, seen):
        return 500, {"X-Stub-Delay": "0.5"}, {"error": {"message": "engine crashed"}}

    with StubServer(policy=slow_500) as server:
        output = close_once_sent(server, "in flight")
    assert output.error == "interrupted" and "http_500" in output.detail
    assert server.requests["in flight"] == 1


def test_json_mode_asks_for_json_on_structured_prompts_only():
    client = OpenAICompatibleBackend(model="m", base_url="http://127.0.0.1:9/v1", json_mode=True)
    structured = GroundingRequest("a", Image.new("RGB", (8, 8)), "0" * 64, "fill", ("category", "style"))
    assert client.payload(structured)["response_format"] == {"type": "json_object"}
    assert "response_format" not in client.payload(request("free text"))
    png = io.BytesIO()
    Image.new("RGB", (4, 4)).save(png, "PNG")
    as_is = GroundingRequest("b", Image.new("RGB", (4, 4)), "0" * 64, "x", None, png.getvalue())
    url = client.payload(as_is)["messages"][0]["content"][1]["image_url"]["url"]
    assert url == "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    assert "json_mode" in client.model_id() and "json_mode" not in backend_model_id_default()


def backend_model_id_default() -> str:
    return OpenAICompatibleBackend(model="m", base_url="http://127.0.0.1:9/v1").model_id()


def test_several_servers_share_the_load_and_retries_move_on():
    def sick(payload, seen):
        return 503, {}, {"error": {"message": "overloaded"}}

    with StubServer() as healthy, StubServer(policy=sick) as unhealthy:
        client = backend(healthy, base_url=f"{healthy.base_url}, {unhealthy.base_url}", max_retries=1)
        client.preflight()
        outputs = client.describe([request(f"item {k}") for k in range(6)])
        client.close()
        dead = f"http://127.0.0.1:{_free_port()}/v1"
        with pytest.raises(BackendUnavailableError, match=f"cannot reach {dead}"):
            backend(healthy, base_url=f"{healthy.base_url},{dead}").preflight()
    assert all(output.text == STUB_ANSWER for output in outputs)  # every 503 was retried elsewhere
    assert sum(unhealthy.requests.values()) == 3 and sum(healthy.requests.values()) == 6


def test_ground_command_through_the_stub(tmp_path: Path, monkeypatch, capsys):
    make_project_home(tmp_path, monkeypatch)

    def policy(payload, seen):
        return 200, {}, completion("" if "title of i02" in request_prompt(payload) else STUB_ANSWER)

    with StubServer(policy=policy) as server:
        argv = ["ground", "shop", "--backend", "openai", "--base-url", server.base_url, "--model", "stub",
                "--concurrency", "4", "--context", "{title}", "--no-progress"]
        assert cli.main(argv) == 0
        rows = {r["item_id"]: r for r in description_rows(tmp_path / "dataset/shop/descriptions/openai-preference.jsonl")}
        assert rows["i01"]["text"] == STUB_ANSWER and rows["i01"]["backend"] == "openai"
        assert rows["i02"]["reason"] == "empty_output" and rows["i10"]["reason"] == "missing"
        sent = sum(server.requests.values())
        assert cli.main(argv) == 0  # rerun: only the failed item is asked again
        assert sum(server.requests.values()) == sent + 1
    assert "cache hits" in capsys.readouterr().out
    dead = ["ground", "shop", "--backend", "openai", "--base-url", f"http://127.0.0.1:{_free_port()}/v1",
            "--model", "stub", "--no-progress"]
    assert cli.main(dead) == 1
    assert "cannot reach" in capsys.readouterr().err


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_a_fatal_stop_keeps_every_row_and_says_what_to_fix(tmp_path: Path, monkeypatch, capsys):
    """A server without /models and a wrong --model: every request answers 404. The run stops at
    once, the descriptions file keeps the earlier run's rows, and the error names what to fix."""
    make_project_home(tmp_path, monkeypatch)
    output = tmp_path / "dataset/shop/descriptions/openai-preference.jsonl"
    with StubServer(list_models=False) as server:
        argv = ["ground", "shop", "--backend", "openai", "--base-url", server.base_url, "--no-progress",
                "--concurrency", "2"]
        assert cli.main(argv + ["--model", "stub"]) == 0
        before = description_rows(output)
        capsys.readouterr()
        assert cli.main(argv + ["--model", "Qwen/typo", "--redo"]) == 1  # --redo: a model switch
        err = capsys.readouterr().err
    after = description_rows(output)
    ok_rows = [r for r in before if r["status"] == "ok"]
    assert len(ok_rows) == 6 and [r for r in after if r["status"] == "ok"] == ok_rows
    assert [r["item_id"] for r in after] == [r["item_id"] for r in before]  # bad images: re-checked
    assert "404" in err and "--base-url" in err and "--model 'Qwen/typo'" in err
    assert "rerun" not in err and "stopped on the error below" in err
    assert f"({len(before)} rows;" in err  # the file was rewritten from the whole cache


def test_a_flaky_server_loses_and_duplicates_nothing(tmp_path: Path):
    """100 images against a server whose first answers to an item are 429 (Retry-After), 500,
    503, a hang past the timeout, broken JSON or empty choices: every item ends with exactly one
    description, its own, and no item is answered successfully twice."""
    faults = [
        (429, {"Retry-After": "0.2"}, {"error": {"message": "slow down"}}),
        (500, {}, {"error": {"message": "engine crashed"}}),
        (503, {}, {"error": {"message": "overloaded"}}),
        (200, {"X-Stub-Delay": "1.5"}, completion("too late")),  # past the 1 s deadline
        (200, {}, b'{"choices": [{"message": '),
        (200, {}, {"object": "chat.completion", "choices": []}),
    ]
    answered = Counter()

    def policy(payload, seen):
        number = int(re.search(r"catalogue item (\d+)", request_prompt(payload)).group(1))
        if seen <= 1 + number % 3:  # 1 to 3 failures, within max_retries
            return faults[(number + seen) % len(faults)]
        answered[number] += 1
        return 200, {}, completion(f"A plain blue object, catalogue item {number}, for daily use at home.")

    items = []
    for number in range(100):
        path = tmp_path / f"{number}.jpg"
        Image.new("RGB", (16, 16), (number, 255 - number, 100)).save(path)
        items.append(GroundingItem(f"item{number:03d}", str(path), f"catalogue item {number}"))
    with StubServer(policy=policy) as server, DescriptionStore(tmp_path / "flaky.sqlite") as store:
        client = backend(server, concurrency=16, timeout=1.0, max_retries=3)
        summary = run_grounding(items, load_prompt("preference"), client, store, tmp_path / "flaky.jsonl",
                                progress=False)
        client.close()
        again = backend(server)
        assert run_grounding(items, load_prompt("preference"), again, store, tmp_path / "flaky.jsonl",
                             progress=False).cached == 100
        again.close()
    rows = description_rows(tmp_path / "flaky.jsonl")
    assert summary.ok == 100 and not summary.failures and len(rows) == 100
    assert all(row["status"] == "ok" and f"item {int(row['item_id'][4:])}," in row["text"] for row in rows)
    assert sorted(answered) == list(range(100)) and set(answered.values()) == {1}


def test_a_proxy_named_by_the_environment_is_used(monkeypatch):
    """HTTP_PROXY set: requests go through it (httpx); here the stub is the proxy, and the
    server name in --base-url does not even resolve."""
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    with StubServer() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.base_url.rsplit("/v1", 1)[0])
        client = OpenAICompatibleBackend(model="stub", base_url="http://vlm-fleet.invalid/v1", max_retries=0)
        client.preflight()
        (output,) = client.describe([request("via proxy")])
        client.close()
    assert output.text == STUB_ANSWER and proxy.requests["via proxy"] == 1


def test_ctrl_c_with_requests_in_flight_keeps_what_finished_and_releases_claims(tmp_path: Path):
    """SIGINT while the event loop has requests in flight: the run stops, finished rows are
    exported, in-flight requests are cancelled, no claim is left, and a rerun does the rest."""
    import signal

    items = []
    for number in range(24):
        path = tmp_path / f"{number}.jpg"
        Image.new("RGB", (8, 8), (number * 10, 0, 0)).save(path)
        items.append(GroundingItem(f"item{number:02d}", str(path), f"catalogue item {number}"))
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with StubServer(latency=0.3) as server, DescriptionStore(tmp_path / "c.sqlite") as store:
            def interrupt_after_answers() -> None:
                while sum(server.requests.values()) < 6:
                    time.sleep(0.01)
                time.sleep(0.35)  # the first answers are back, the next ones in flight
                signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

            threading.Thread(target=interrupt_after_answers, daemon=True).start()
            client = backend(server, concurrency=3)
            summary = run_grounding(items, load_prompt("preference"), client, store, tmp_path / "c.jsonl",
                                    progress=False)
            client.close()
            assert summary.interrupted and 3 <= summary.described < 24
            assert store._db.execute("SELECT COUNT(*) FROM claims").fetchone()[0] == 0
            done = {row["item_id"] for row in description_rows(tmp_path / "c.jsonl")}
            assert len(done) == summary.described
            rerun = backend(server, concurrency=3)
            again = run_grounding(items, load_prompt("preference"), rerun, store, tmp_path / "c.jsonl",
                                  progress=False)
            rerun.close()
    finally:
        signal.signal(signal.SIGINT, previous)
    assert again.cached == len(done) and again.described == 24 - len(done)
