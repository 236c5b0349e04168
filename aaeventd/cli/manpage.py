"""The man page, aaeventd(1): man(7) roff written from the command's argparse parser.

Owns :func:`render_manpage` (NAME, SYNOPSIS, DESCRIPTION and OPTIONS from the
top-level parser; COMMANDS from each sub-command's usage, description, arguments and
examples; the fixed EXIT STATUS, ENVIRONMENT, FILES and SEE ALSO sections) and the
roff escaping.  The page is what ``Documentation=man:aaeventd(1)`` in the unit points
at: ``aaeventd install-service`` writes it to ``$XDG_DATA_HOME/man/man1/aaeventd.1``,
and ``python -m aaeventd.cli.manpage`` prints it (for packagers).

Standard library only.  Of argparse's internals it reads just ``parser._actions``
and the sub-command action's ``choices`` and ``_choices_actions``; every other
attribute read (``option_strings``, ``metavar``, ``nargs``, ...) is public.  It does
not import :mod:`aaeventd.cli` except to print the page when run as a module.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator

# The exit codes aaeventd.cli.common defines, and what each means (cli/__init__.py).
EXIT_STATUS = (
    ("0", "Success."),
    (
        "1",
        "A runtime failure: the daemon is unreachable, an event or an answer was "
        "rejected, a socket is in use, a file could not be written.",
    ),
    ("2", "A bad configuration or a usage error."),
    ("130", "Interrupted by Ctrl-C (quietly, in any command)."),
)

# The variables aaeventd reads (aaeventd/config.py, aaeventd/endpoints.py, cli/service.py).
ENVIRONMENT = (
    ("AAEVENTD_CONFIG", "The config file, when --config is not given (empty means unset)."),
    (
        "AAEVENTD_SOCKET",
        "The daemon's Unix socket for programs that send events (aaeventd emit, the "
        "aaeventd.client library), before sources.socket_path of the config.",
    ),
    (
        "XDG_CONFIG_HOME",
        "Where the config (aaeventd/config.yaml) and the systemd user units "
        "(systemd/user/) are looked for; default ~/.config.",
    ),
    (
        "XDG_RUNTIME_DIR",
        "The default socket is $XDG_RUNTIME_DIR/aaeventd/events.sock "
        "(else /tmp/aaeventd-UID/events.sock).",
    ),
    ("XDG_STATE_HOME", "The default journal is $XDG_STATE_HOME/aaeventd/journal."),
    (
        "XDG_DATA_HOME",
        "install-service writes this page to $XDG_DATA_HOME/man/man1/aaeventd.1; "
        "default ~/.local/share.",
    ),
    (
        "RUNTIME_DIRECTORY, STATE_DIRECTORY",
        "Set by systemd for the service (RuntimeDirectory=, StateDirectory=): the daemon "
        "puts its socket and its journal there.",
    ),
)

FILES = (
    (
        "$XDG_CONFIG_HOME/aaeventd/config.yaml",
        "The config, when neither --config nor $AAEVENTD_CONFIG names one "
        "(~/.config/aaeventd/config.yaml by default). Without it the built-in defaults "
        "apply; aaeventd check-config --example prints every key with its default.",
    ),
    ("$XDG_RUNTIME_DIR/aaeventd/events.sock", "The Unix socket sources send events to."),
    (
        "~/.local/state/aaeventd/journal/",
        "The event journal ($STATE_DIRECTORY/journal under systemd).",
    ),
    (
        "~/.config/systemd/user/aaeventd.service",
        "The user unit install-service writes (with --socket-activated also "
        "aaeventd.socket and aaeventd-ws.socket).",
    ),
    ("~/.local/share/man/man1/aaeventd.1", "This page, as install-service writes it."),
)

SEE_ALSO = (("systemctl", "1"), ("journalctl", "1"))


def render_manpage(parser: argparse.ArgumentParser, *, version: str) -> str:
    """aaeventd(1) in man(7) roff, for ``parser`` (:func:`aaeventd.cli.build_parser`).

    Args:
        parser: the top-level parser; its sub-commands become the COMMANDS section.
        version: shown in the page's footer (``aaeventd VERSION``).
    """
    prog = parser.prog
    summary = (parser.description or prog).split(": ", 1)[-1].rstrip(".")
    out = [
        f'.TH {_roff(prog.upper())} 1 "" "{_roff(f"{prog} {version}")}" "User Commands"',
        # No hyphenation, ragged right: paths and options stay whole and copyable.
        ".nh",
        ".ad l",
        ".SH NAME",
        f"{_roff(prog)} \\- {_roff(summary)}",
        ".SH SYNOPSIS",
        *_usage(parser),
        ".SH DESCRIPTION",
        *_text(parser.description or ""),
    ]
    commands = _subcommands(parser)
    for name, short in commands:
        out += [".TP", f"\\fB{_roff(name)}\\fR", _roff(short)]
    out += [".PP", *_text(parser.epilog or "")]
    out += [".SH OPTIONS", *_arguments(parser, with_help=True)]
    out.append(".SH COMMANDS")
    choices = _subparsers(parser).choices
    for name, _ in commands:
        sub = choices[name]
        out += [f".SS {_roff(f'{prog} {name}')}", *_usage(sub), ".PP", *_text(sub.description)]
        out += _arguments(sub, with_help=False)
        if sub.epilog:
            out += [".PP", *_text(sub.epilog)]
    out.append(".SH EXIT STATUS")
    for code, meaning in EXIT_STATUS:
        out += [".TP", f"\\fB{code}\\fR", _roff(meaning)]
    out.append(".SH ENVIRONMENT")
    for variable, meaning in ENVIRONMENT:
        out += [".TP", f"\\fB{_roff(variable)}\\fR", _roff(meaning)]
    out.append(".SH FILES")
    for path, meaning in FILES:
        out += [".TP", f"\\fI{_roff(path)}\\fR", _roff(meaning)]
    out.append(".SH SEE ALSO")
    out.append(",\n".join(f"\\fB{_roff(page)}\\fR({section})" for page, section in SEE_ALSO))
    return "\n".join(out) + "\n"


def _roff(text: str) -> str:
    """``text`` as roff: backslashes as ``\\e``, every hyphen ``\\-`` (copied from the
    page, options and commands keep their ASCII hyphen), and a line that starts with
    a control character (``.`` or ``'``) guarded by ``\\&``."""
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(
        f"\\&{line}" if line.startswith((".", "'")) else line for line in escaped.split("\n")
    )


def _text(text: str | None) -> Iterator[str]:
    """A description or epilog: its lines filled as one paragraph, and indented lines
    (argparse examples) kept as they are, in an indented no-fill block."""
    block: list[str] = []
    for line in (text or "").splitlines():
        if line.startswith((" ", "\t")):
            block.append(line.strip())
            continue
        if block:
            yield from _verbatim(block)
            block = []
        if line.strip():
            stripped = line.strip()
            yield _roff(stripped)
    if block:
        yield from _verbatim(block)


def _verbatim(lines: list[str]) -> Iterator[str]:
    yield ".RS 4"
    yield ".nf"
    yield from (_roff(line) for line in lines)
    yield ".fi"
    yield ".RE"


def _usage(parser: argparse.ArgumentParser) -> Iterator[str]:
    """The usage line argparse prints, on one line (roff fills it at any width)."""
    words = parser.format_usage().split()
    if words and words[0] == "usage:":
        words = words[1:]
    prog = parser.prog.split()
    yield ".PP"
    yield f"\\fB{_roff(' '.join(words[: len(prog)]))}\\fR {_roff(' '.join(words[len(prog) :]))}"


def _subparsers(
    parser: argparse.ArgumentParser,
) -> argparse._SubParsersAction[argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    raise ValueError(f"{parser.prog}: no sub-commands")


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str]]:
    """(name, one-line help) of each sub-command, in the order they were added."""
    action = _subparsers(parser)
    helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
    return [(name, helps.get(name, "")) for name in action.choices]


def _arguments(parser: argparse.ArgumentParser, *, with_help: bool) -> Iterator[str]:
    """One ``.TP`` per argument of ``parser``: positionals first, then options.

    ``with_help``: include ``-h, --help`` (said once, for the top-level parser).
    """
    actions = [
        a
        for a in parser._actions
        if a.help != argparse.SUPPRESS
        and not isinstance(a, argparse._SubParsersAction)
        and (with_help or "-h" not in a.option_strings)
    ]
    actions.sort(key=lambda a: bool(a.option_strings))
    for action in actions:
        yield ".TP"
        yield _invocation(action)
        yield _roff(_expand_help(action, parser.prog))


def _invocation(action: argparse.Action) -> str:
    """``--config PATH``, ``-q, --quiet``, ``KEY=VALUE ...`` in roff fonts."""
    metavar = _metavar(action)
    if not action.option_strings:
        name = f"\\fI{_roff(metavar)}\\fR"
        return f"{name} ..." if action.nargs in ("*", "+") else name
    takes_value = action.nargs != 0
    names = [f"\\fB{_roff(opt)}\\fR" for opt in action.option_strings]
    if takes_value:
        names = [f"{name} \\fI{_roff(metavar)}\\fR" for name in names]
    return ", ".join(names)


def _metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if isinstance(action.metavar, tuple):
        return " ".join(str(m) for m in action.metavar)
    if action.choices is not None:
        return "{" + ",".join(str(c) for c in action.choices) + "}"
    return action.dest if not action.option_strings else action.dest.upper()


def _expand_help(action: argparse.Action, prog: str) -> str:
    """The help text with argparse's ``%(default)s``-style specifiers filled in."""
    text = action.help or ""
    if "%" not in text:
        return text
    params: dict[str, object] = {k: v for k, v in vars(action).items() if v != argparse.SUPPRESS}
    params["prog"] = prog
    if action.choices is not None:
        params["choices"] = ", ".join(str(c) for c in action.choices)
    return text % params


def main() -> int:
    """Print the page for this installation's parser and version."""
    from aaeventd import __version__
    from aaeventd.cli import build_parser

    sys.stdout.write(render_manpage(build_parser(), version=__version__))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
