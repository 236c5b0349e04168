"""aaeventd.tokens: one reader of the token file, for the daemon and for the CLI.

(The daemon's side, creation and modes, is in tests/test_security.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from aaeventd.cli import main
from aaeventd.errors import ConfigError
from aaeventd.tokens import load_or_create_token, read_token

pytestmark = pytest.mark.usefixtures("private_env")


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"abc\n", "abc"),
        (b"  abc \r\nsecond line\n", "abc"),
        (b"abc", "abc"),
    ],
)
def test_both_readers_take_the_stripped_first_line(
    tmp: Path, content: bytes, expected: str
) -> None:
    """The CLI's reader and the daemon's give the same token: the first line, stripped."""
    path = tmp / "token"
    path.write_bytes(content)
    path.chmod(0o600)
    assert (read_token(path), load_or_create_token(path)) == (expected, expected)


def test_missing_or_empty_file_is_no_token_for_the_cli(tmp: Path) -> None:
    """read_token: None for a missing file (the daemon creates it) or an empty first line,
    and it never creates the file."""
    assert read_token(tmp / "missing") is None
    assert not (tmp / "missing").exists()
    (tmp / "empty").write_text("\nsecond\n", encoding="utf-8")
    assert read_token(tmp / "empty") is None


@pytest.mark.parametrize("content", [b"\xff\xfe\n", None])
def test_unreadable_token_file_is_a_config_error(tmp: Path, content: bytes | None) -> None:
    """A token file that is not UTF-8 or not a file: ConfigError naming auth.token_file."""
    path = tmp / "token"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=r"auth\.token_file"):
        read_token(path)
    with pytest.raises(ConfigError, match=r"auth\.token_file"):
        load_or_create_token(path)


def test_cli_reads_the_configured_token_file(tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`aaeventd ui` links with the token read from auth.token_file."""
    (tmp / "token").write_text("Tok-123 \n", encoding="utf-8")
    config = tmp / "c.yaml"
    config.write_text(f'{{"auth": {{"token_file": "{tmp / "token"}"}}}}', encoding="utf-8")
    assert main(["ui", "--config", str(config), "--url", "http://127.0.0.1:1/"]) == 0
    assert capsys.readouterr().out == "http://127.0.0.1:1/?token=Tok-123\n"
