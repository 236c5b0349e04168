"""``aaeventd confirm``: list pending confirmations and answer one (aaeventd.cli.confirm),
and the library calls it is built on (aaeventd.subscriber).

The daemon runs in this test's loop; ``main([...])`` runs in a worker thread (its
websockets client is the blocking one), so the test can play source and other
clients meanwhile.  Exit codes and output are asserted exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import io
import json
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from aaeventd import __version__
from aaeventd.cli import main
from aaeventd.daemon.app import Daemon
from aaeventd.subscriber import (
    ConfirmationRefused,
    SubscriberError,
    answer_confirmation,
    pending_confirmations,
)
from tests.support import (
    Source,
    make_config,
    recv_json,
    run,
    running_daemon,
    short_tmpdir,
    ws_connect,
)

HELLO = {"type": "hello", "name": "cli-tests", "acks": True}


class FakeTerminal(io.StringIO):
    """Typed answers on a terminal (only isatty differs from a pipe)."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def no_user_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """No user config or token can leak into a test; stdin is an empty pipe."""
    monkeypatch.delenv("AAEVENTD_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.mktemp("cfg")))
    monkeypatch.setattr("sys.stdin", io.StringIO(""))


@contextlib.asynccontextmanager
async def daemon(**sections: dict[str, Any]) -> AsyncIterator[tuple[Daemon, Path]]:
    with short_tmpdir() as tmp:
        async with running_daemon(make_config(tmp, **sections)) as d:
            yield d, tmp


async def cli(*argv: str) -> int:
    return await asyncio.to_thread(main, list(argv))


def url(d: Daemon) -> str:
    return f"ws://127.0.0.1:{d.ws_port}/"


async def ask(src: Source, **fields: Any) -> str:
    event = {"type": "confirmation_required", **fields}
    if "message" not in fields and "prompt" not in fields:
        event["message"] = "Deploy?"
    await src.send(event)
    ack = await src.recv()
    assert ack["type"] == "ack", ack
    cid = ack["id"]
    assert isinstance(cid, str)
    return cid


def test_confirm_help_has_an_example(capsys: pytest.CaptureFixture[str]) -> None:
    """`aaeventd confirm --help` exits 0 and shows both forms with an example."""
    assert main(["confirm", "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: aaeventd confirm" in out
    assert "examples:" in out
    assert "aaeventd confirm 3f2a9c1e" in out
    assert "--remember {none,this-error,this-skill,always}" in out
    assert main(["--help"]) == 0
    assert "confirm" in capsys.readouterr().out


def test_confirm_lists_pending_confirmations(capsys: pytest.CaptureFixture[str]) -> None:
    """Without arguments (no terminal) confirm lists each pending confirmation; exit 0."""

    async def body() -> None:
        async with daemon() as (d, _), await Source.connect(d.socket_path, hello=HELLO) as src:
            first = await ask(
                src,
                message="Merge PR 12?",
                options=["merge", "wait"],
                timeout_seconds=120,
                skill_name="ship",
                step_name="merge",
                step_index=2,
                claude_suggestion="merge",
            )
            second = await ask(src, prompt="Push?", timeout_seconds=30)
            assert await cli("confirm", "--url", url(d)) == 0
            out = capsys.readouterr().out.splitlines()
        assert len(out) == 6, out
        assert re.fullmatch(rf"1\. {first}  \(1(19|20)\.\ds left\)  \[merge/wait\]", out[0])
        assert out[1:4] == [
            "   Merge PR 12?",
            "   skill_name=ship step_name=merge step_index=2",
            "   suggestion: merge",
        ]
        assert re.fullmatch(rf"2\. {second}  \((29|30)\.\ds left\)  \[yes/no\]", out[4])
        assert out[5] == "   Push?"

    run(body())


def test_confirm_with_nothing_pending(capsys: pytest.CaptureFixture[str]) -> None:
    """Nothing pending: says so and exits 0."""

    async def body() -> None:
        async with daemon() as (d, _):
            assert await cli("confirm", "--url", url(d)) == 0
        assert capsys.readouterr().out == "no pending confirmations\n"

    run(body())


def test_confirm_id_response_answers_and_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    """`confirm ID RESPONSE --remember M`: the source gets that answer, exit 0."""

    async def body() -> None:
        async with (
            daemon() as (d, _),
            await Source.connect(d.socket_path, hello=HELLO) as src,
            await ws_connect(d, "types=confirmation_answered") as observer,
        ):
            await recv_json(observer)
            cid = await ask(src)
            assert await cli("confirm", cid, "no", "--remember", "this-skill", "--url", url(d)) == 0
            assert await src.recv() == {
                "type": "confirmation_response",
                "id": cid,
                "response": "no",
                "remember": "this-skill",
            }
            answered = await recv_json(observer)
        user_agent = answered["answered_by"]["user_agent"]
        assert user_agent == f"aaeventd-confirm/{__version__} ({getpass.getuser()})"
        assert capsys.readouterr().out == f"answered {cid}: no (remember=this-skill)\n"

    run(body())


def test_confirm_unknown_id_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """An id that is not pending: exit 1 with the daemon's unknown_confirmation."""

    async def body() -> None:
        async with daemon() as (d, _):
            assert await cli("confirm", "nope", "yes", "--url", url(d)) == 1
        captured = capsys.readouterr()
        assert captured.out == ""
        assert captured.err.startswith("aaeventd: not answered (unknown_confirmation): ")

    run(body())


def test_confirm_response_not_an_option_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    """A response outside the options: exit 1 with invalid_response; still pending."""

    async def body() -> None:
        async with daemon() as (d, _), await Source.connect(d.socket_path, hello=HELLO) as src:
            cid = await ask(src)
            assert await cli("confirm", cid, "maybe", "--url", url(d)) == 1
            assert d.hub.pending_count == 1
        assert "not answered (invalid_response)" in capsys.readouterr().err

    run(body())


def test_confirm_loses_to_an_earlier_answer(capsys: pytest.CaptureFixture[str]) -> None:
    """Answered by another client first: confirm exits 1 with unknown_confirmation."""

    async def body() -> None:
        async with daemon() as (d, _), await Source.connect(d.socket_path, hello=HELLO) as src:
            cid = await ask(src)
            async with await ws_connect(d) as other:
                await recv_json(other)
                msg = {"type": "confirmation_response", "id": cid, "response": "yes"}
                await other.send(json.dumps(msg))
                assert (await src.recv())["response"] == "yes"
            assert await cli("confirm", cid, "no", "--url", url(d)) == 1
        assert "not answered (unknown_confirmation)" in capsys.readouterr().err

    run(body())


def test_confirm_interactive_on_a_terminal(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal confirm asks which one, the response and remember, re-asking on typos."""

    async def body() -> None:
        async with daemon() as (d, _), await Source.connect(d.socket_path, hello=HELLO) as src:
            await ask(src, message="First?")
            second = await ask(src, message="Second?", options=["go", "stop"])
            monkeypatch.setattr("sys.stdin", FakeTerminal("7\n2\nmaybe\nstop\nalways\n"))
            assert await cli("confirm", "--url", url(d)) == 0
            assert await src.recv() == {
                "type": "confirmation_response",
                "id": second,
                "response": "stop",
                "remember": "always",
            }
            assert d.hub.pending_count == 1
        out = capsys.readouterr().out
        assert "type a number from 1 to 2" in out
        assert "type one of: go, stop" in out
        assert out.endswith(f"answered {second}: stop (remember=always)\n")

    run(body())


def test_confirm_interactive_empty_answer_answers_nothing(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """On a terminal, an empty response leaves the confirmation pending; exit 0."""

    async def body() -> None:
        async with daemon() as (d, _), await Source.connect(d.socket_path, hello=HELLO) as src:
            await ask(src)
            monkeypatch.setattr("sys.stdin", FakeTerminal("\n"))
            assert await cli("confirm", "--url", url(d)) == 0
            assert d.hub.pending_count == 1
        assert "answered" not in capsys.readouterr().out

    run(body())


def test_confirm_uses_the_configured_port_and_token(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """With --config, confirm finds the port and sends the token of auth.token_file."""

    async def body() -> None:
        with short_tmpdir() as tmp:
            token = tmp / "token"
            cfg = make_config(tmp, auth={"token_file": str(token)})
            async with running_daemon(cfg) as d:
                path = tmp / "c.yaml"
                path.write_text(
                    json.dumps(
                        {"websocket": {"port": d.ws_port}, "auth": {"token_file": str(token)}}
                    )
                )
                assert await cli("confirm", "--config", str(path)) == 0
                assert capsys.readouterr().out == "no pending confirmations\n"
                assert await cli("confirm", "--url", url(d)) == 1
                assert "HTTP 401" in capsys.readouterr().err

    run(body())


def test_confirm_usage_and_unreachable(capsys: pytest.CaptureFixture[str]) -> None:
    """ID without RESPONSE is a usage error (2); no daemon is exit 1."""
    assert main(["confirm", "only-id"]) == 2
    assert "both ID and RESPONSE" in capsys.readouterr().err
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert main(["confirm", "--url", f"ws://127.0.0.1:{port}/"]) == 1
    assert "is aaeventd running?" in capsys.readouterr().err


# -- the library call the command is built on (aaeventd.subscriber) ------------------


def test_library_lists_and_answers_pending_confirmations() -> None:
    """pending_confirmations is the snapshot's list; answer_confirmation returns the
    confirmation_answered frame, with the user agent given."""

    async def body() -> None:
        async with daemon() as (d, _), await Source.connect(d.socket_path, hello=HELLO) as src:
            cid = await ask(src, prompt="Ship it?", options=["yes", "no"])
            pending = await asyncio.to_thread(pending_confirmations, url(d))
            assert [(p["id"], p["prompt"]) for p in pending] == [(cid, "Ship it?")]
            answered = await asyncio.to_thread(
                answer_confirmation, url(d), cid, "no", remember="this-skill", user_agent="lib/1"
            )
            assert (answered["id"], answered["response"], answered["remember"]) == (
                cid,
                "no",
                "this-skill",
            )
            assert answered["answered_by"]["user_agent"] == "lib/1"
            assert (await src.recv())["response"] == "no"
            assert await asyncio.to_thread(pending_confirmations, url(d)) == []

    run(body())


def test_library_answer_that_loses_raises_confirmation_refused() -> None:
    """An answer the daemon refuses raises ConfirmationRefused with the daemon's code."""

    async def body() -> None:
        async with daemon() as (d, _):
            with pytest.raises(ConfirmationRefused) as caught:
                await asyncio.to_thread(answer_confirmation, url(d), "nope", "yes")
        assert caught.value.code == "unknown_confirmation"
        assert str(caught.value).startswith("not answered (unknown_confirmation): ")

    run(body())


def test_library_without_a_daemon_raises_subscriber_error() -> None:
    """Nothing listening: SubscriberError, naming the URL without its query."""
    with socket.socket() as holder:  # bound, never listening: connections are refused
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        with pytest.raises(SubscriberError, match=r"^cannot connect to ws://127\.0\.0\.1:\d+/: "):
            pending_confirmations(f"http://127.0.0.1:{port}/?token=secret")
