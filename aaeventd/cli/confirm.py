"""``aaeventd confirm``: list the pending confirmations, choose one and answer it.

The wire protocol (the snapshot's ``pending_confirmations``, the answer and its
heartbeat barrier) is :class:`aaeventd.subscriber.Confirmations`; this module asks
the human and prints the outcome.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import TYPE_CHECKING, Any

from aaeventd import __version__
from aaeventd.cli.common import (
    EXIT_FAILURE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    REMEMBER_CHOICES,
    configured_token,
    err,
    load,
    stream_url,
)

if TYPE_CHECKING:
    from aaeventd.subscriber import Confirmations


def cmd_confirm(args: argparse.Namespace) -> int:
    from aaeventd.subscriber import CONFIRMATION_TYPES, Confirmations, SubscriberError

    if (args.id is None) != (args.response is None):
        err("confirm needs both ID and RESPONSE, or neither (to list and choose)")
        return EXIT_USAGE
    config, _ = load(args)
    # Only what tells whether we won (errors and heartbeat_ack are never filtered):
    # a busy stream must not pile up while a human reads the prompt.
    url = stream_url(config, args, types=CONFIRMATION_TYPES, token=configured_token(config))
    try:
        with Confirmations(
            url,
            # Shown as answered_by.user_agent and in the daemon's audit line.
            user_agent=f"aaeventd-confirm/{__version__} ({_login()})",
        ) as conn:
            if args.id is not None:
                return _answer(conn, args.id, args.response, args.remember)
            pending = conn.pending
            _print_pending(pending)
            if not pending or not sys.stdin.isatty():
                return EXIT_OK
            choice = _choose(pending)
            if choice is None:
                return EXIT_OK
            cid, response, remember = choice
            return _answer(conn, cid, response, remember)
    except SubscriberError as exc:
        err(str(exc))
    except EOFError:
        print(file=sys.stderr)
        err("nothing answered")
    except KeyboardInterrupt:
        print(file=sys.stderr)  # end the prompt's line; Ctrl-C says the rest
        return EXIT_INTERRUPTED
    return EXIT_FAILURE


def _login() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no name for our uid
        return f"uid {os.getuid()}"


def _print_pending(pending: list[dict[str, Any]]) -> None:
    if not pending:
        print("no pending confirmations")
        return
    for number, item in enumerate(pending, start=1):
        remaining = item.get("remaining_seconds")
        left = f"{remaining:.1f}s left" if isinstance(remaining, int | float) else "?"
        if item.get("paused"):
            left += ", paused"
        options = "/".join(str(o) for o in item.get("options") or [])
        print(f"{number}. {item.get('id')}  ({left})  [{options}]")
        print(f"   {item.get('prompt') or item.get('message')}")
        where = [
            f"{key}={item[key]}"
            for key in ("skill_name", "skill_id", "step_name", "step_index")
            if item.get(key) is not None
        ]
        if where:
            print(f"   {' '.join(where)}")
        if item.get("claude_suggestion") is not None:
            print(f"   suggestion: {item['claude_suggestion']}")


def _choose(pending: list[dict[str, Any]]) -> tuple[str, str, str] | None:
    """Ask on the terminal which confirmation to answer and how (None: none)."""
    if len(pending) == 1:
        item = pending[0]
    else:
        while True:
            raw = input(f"answer which one? [1-{len(pending)}, empty: none] ").strip()
            if not raw:
                return None
            if raw.isdigit() and 1 <= int(raw) <= len(pending):
                item = pending[int(raw) - 1]
                break
            print(f"type a number from 1 to {len(pending)}")
    options = [str(o) for o in item.get("options") or []]
    while True:
        raw = input(f"response to {item.get('id')} [{'/'.join(options)}, empty: none] ").strip()
        if not raw:
            return None
        if raw in options:
            response = raw
            break
        print(f"type one of: {', '.join(options)}")
    while True:
        raw = input(f"remember [{'/'.join(REMEMBER_CHOICES)}, empty: none] ").strip() or "none"
        if raw in REMEMBER_CHOICES:
            return str(item.get("id")), response, raw
        print(f"type one of: {', '.join(REMEMBER_CHOICES)}")


def _answer(conn: Confirmations, cid: str, response: str, remember: str) -> int:
    """Send the answer (:meth:`Confirmations.answer`) and print whether it won."""
    from aaeventd.subscriber import ConfirmationRefused

    try:
        answered = conn.answer(cid, response, remember)
    except ConfirmationRefused as exc:
        err(str(exc))
        return EXIT_FAILURE
    print(f"answered {cid}: {answered.get('response')} (remember={answered.get('remember')})")
    return EXIT_OK
