"""``aaeventd status``, ``clients`` and ``ui``: the daemon's HTTP side, read from the CLI.

``status`` and ``clients`` GET ``/healthz`` and ``/clients`` (:func:`_http_json`, never
through a proxy: the token goes with the request) and print them through
:mod:`aaeventd.cli.console`; ``ui`` prints (and opens) the web UI's link.
"""

from __future__ import annotations

import argparse
import http.client
import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlencode

from aaeventd import __version__
from aaeventd.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    CommandFailed,
    configured_token,
    daemon_base,
    err,
    load,
)
from aaeventd.cli.console import format_clients, format_health
from aaeventd.config import Config, resolve_token_file

HTTP_TIMEOUT = 3.0  # seconds, for /healthz and /clients


def _ui_link(base: str, token: str | None) -> str:
    """The web UI link; with a token, ``?token=T`` (PROTOCOL §2.4: one link is enough)."""
    return base + ("?" + urlencode({"token": token}) if token is not None else "")


def _http_json(base: str, path: str, config: Config, token: str | None) -> tuple[Any, str]:
    """GET ``base + path`` and parse the JSON answer; (the object, the body as text).

    Raises:
        CommandFailed: unreachable, refused (401 says the token is at fault) or not JSON.
    """
    url = base.rstrip("/") + path
    request = urllib.request.Request(url, headers={"User-Agent": f"aaeventd-cli/{__version__}"})
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    # Never through an HTTP proxy from the environment: the daemon is on this machine,
    # and a proxy would be handed the token.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=HTTP_TIMEOUT) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            detail = exc.read(200).decode("utf-8", "replace").strip()
        if exc.code == 401:
            token_file = resolve_token_file(config)
            where = (
                f"auth.token_file is {token_file}"
                if token_file is not None
                else "this config sets no auth.token_file"
            )
            raise CommandFailed(
                f"{url}: HTTP 401: the token is missing or wrong ({where})"
            ) from exc
        raise CommandFailed(f"{url}: HTTP {exc.code}: {detail or exc.reason}") from exc
    except urllib.error.URLError as exc:
        raise CommandFailed(
            f"cannot reach aaeventd at {base}: {exc.reason} (is aaeventd running?)"
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise CommandFailed(
            f"cannot reach aaeventd at {base}: {exc or type(exc).__name__} "
            "(is aaeventd running on that port?)"
        ) from exc
    text = body.decode("utf-8", "replace")
    try:
        obj = json.loads(text)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise CommandFailed(f"{url} did not answer with a JSON object: is that aaeventd?")
    return obj, text


def cmd_status(args: argparse.Namespace) -> int:
    config, _ = load(args)
    base = daemon_base(config, args)
    token = configured_token(config)
    health, text = _http_json(base, "/healthz", config, token)
    if args.json:
        print(text.rstrip("\n"))
    else:
        for line in format_health(health, _ui_link(base, token)):
            print(line)
        _warn_no_token(config, token)
    if health.get("status") != "ok":
        err(f"the daemon reports status {health.get('status')!r}")
        return EXIT_FAILURE
    return EXIT_OK


def cmd_clients(args: argparse.Namespace) -> int:
    config, _ = load(args)
    base = daemon_base(config, args)
    view, text = _http_json(base, "/clients", config, configured_token(config))
    if args.json:
        print(text.rstrip("\n"))
        return EXIT_OK
    for line in format_clients(view):
        print(line)
    return EXIT_OK


def _warn_no_token(config: Config, token: str | None) -> None:
    token_file = resolve_token_file(config)
    if token is None and token_file is not None:
        err(
            f"no token in {token_file} yet (the daemon creates it when it starts): "
            "the link will be refused until then"
        )


def cmd_ui(args: argparse.Namespace) -> int:
    config, _ = load(args)
    base = daemon_base(config, args)
    token = configured_token(config)
    if token is None and resolve_token_file(config) is not None:
        _warn_no_token(config, token)
        return EXIT_FAILURE
    link = _ui_link(base, token)
    print(link)
    if args.open:
        import webbrowser

        if not webbrowser.open(link):
            err("no web browser could be started: open the link above yourself")
            return EXIT_FAILURE
    return EXIT_OK
