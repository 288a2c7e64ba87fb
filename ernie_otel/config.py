"""Typed, validated, immutable configuration, one frozen dataclass per program.

Each field of a config class carries its own command-line flag and/or environment variable, help
text, converter, check and choices (:func:`option`). From those one description come:

- the argparse parser (:func:`parser_for`): no default is written twice, the help text shows
  the dataclass default, and argparse never holds a default of its own (``SUPPRESS``), so what
  the user gave is told apart from what the dataclass supplies;
- parsing (:func:`from_sources`): flag, else environment variable, else the dataclass default;
- validation, in ``__post_init__`` of :class:`Config`, so a config built in Python is checked as
  strictly as one from the command line.

A bad value is one line naming the flag or variable; programs exit 2 with it (:func:`load_or_exit`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, ClassVar, Literal, NoReturn, TypeVar

OPTION = "ernie_otel.option"

Kind = Literal["value", "switch", "toggle"]


class ConfigError(ValueError):
    """A bad configuration value; the message is one line that names its flag or variable."""


@dataclass(frozen=True)
class Option:
    """How one config field is given and checked (kept in the field's metadata)."""

    flag: str | None  # "--max-num-seqs"; None: not on the command line
    env: str | None  # read when the flag is not given; None: no environment variable
    help: str
    convert: Callable[[str], Any]  # text from the command line or the environment -> value
    check: Callable[[Any], None] | None  # raises ValueError("must be ...") for a bad value
    choices: tuple[str, ...] | None
    kind: Kind  # value: --flag VALUE; switch: --flag sets True; toggle: --flag / --no-flag
    metavar: str | None

    @property
    def label(self) -> str:
        """What an error message names: the flag, else the environment variable."""
        return self.flag or self.env or "?"

    def validate(self, value: Any) -> None:
        if value is None:
            return  # "not set" is always allowed where the type admits it
        if self.choices is not None and value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}, not {value!r}")
        if self.check is not None:
            self.check(value)

    def parse(self, text: str) -> Any:
        value = self.convert(text)
        self.validate(value)
        return value


def option(default: Any = MISSING, *, flag: str | None = None, env: str | None = None, help: str = "",
           convert: Callable[[str], Any] = str, check: Callable[[Any], None] | None = None,
           choices: Sequence[str] | None = None, kind: Kind = "value", metavar: str | None = None,
           factory: Callable[[], Any] | None = None) -> Any:
    """A dataclass field described for the command line and the environment."""
    meta = {OPTION: Option(flag, env, help, convert, check, tuple(choices) if choices else None, kind, metavar)}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def option_of(f: Field[Any]) -> Option | None:
    opt = f.metadata.get(OPTION)
    return opt if isinstance(opt, Option) else None


class Config:
    """Base of the config dataclasses: every field is checked at construction."""

    __dataclass_fields__: ClassVar[dict[str, Field[Any]]]

    def __post_init__(self) -> None:
        for f in fields(self):
            opt = option_of(f)
            if opt is None:
                continue
            try:
                opt.validate(getattr(self, f.name))
            except ValueError as exc:
                raise ConfigError(_message(opt.label, exc)) from None
        self.check()

    def check(self) -> None:
        """Checks that involve more than one field; raise ConfigError naming the flags."""

    @classmethod
    def label(cls, name: str) -> str:
        """The flag (or variable) of field ``name``, for messages of :meth:`check`."""
        opt = option_of(cls.__dataclass_fields__[name])
        return opt.label if opt is not None else name


C = TypeVar("C", bound=Config)


def _message(label: str, exc: Exception) -> str:
    text = str(exc)
    return text if text.startswith(label) else f"{label}: {text}"


def default_of(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return None


# ------------------------------------------------------------------------------ converters/checks
def to_int(text: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise ValueError(f"must be an integer, not {text!r}") from None


def to_float(text: str) -> float:
    try:
        return float(text.strip())
    except ValueError:
        raise ValueError(f"must be a number, not {text!r}") from None


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


def to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"must be true or false, not {text!r}")


def to_json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ValueError("must be a JSON object")
    return value


def to_lower(text: str) -> str:
    return text.strip().lower()


def at_least(low: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if value < low:
            raise ValueError(f"must be at least {low:g}, not {value!r}")

    return check


def above(low: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not value > low:
            raise ValueError(f"must be more than {low:g}, not {value!r}")

    return check


def between(low: float, high: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not low <= value <= high:
            raise ValueError(f"must be between {low:g} and {high:g}, not {value!r}")

    return check


def port_number(value: int) -> None:
    between(0, 65535)(value)


def http_url(value: str) -> None:
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise ValueError(f"must be an http:// or https:// URL, not {value!r}")


# ------------------------------------------------------------------------------ parser and parsing
class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (and exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _help(opt: Option, default: Any) -> str:
    text = opt.help
    if opt.env:
        text += f"{'; ' if text else ''}env {opt.env}"
    if opt.kind == "value" and default is not None and default != {}:
        text += f" (default: {default})"
    elif opt.kind == "toggle":
        text += f" (default: {'on' if default else 'off'})"
    return text.replace("%", "%%")  # argparse formats help with %-substitution


def _arg_type(opt: Option) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            return opt.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return parse


def add_options(parser: argparse.ArgumentParser, cls: type[Config]) -> None:
    """Add one argument per field of ``cls`` that has a flag; none has an argparse default."""
    for f in fields(cls):
        opt = option_of(f)
        if opt is None or opt.flag is None:
            continue
        help_text = _help(opt, default_of(f))
        if opt.kind == "switch":
            parser.add_argument(opt.flag, dest=f.name, action="store_true", default=argparse.SUPPRESS, help=help_text)
        elif opt.kind == "toggle":
            parser.add_argument(opt.flag, dest=f.name, action=argparse.BooleanOptionalAction,
                                default=argparse.SUPPRESS, help=help_text)
        else:
            parser.add_argument(opt.flag, dest=f.name, type=_arg_type(opt), choices=opt.choices,
                                default=argparse.SUPPRESS, metavar=opt.metavar, help=help_text)


def parser_for(cls: type[Config], *, prog: str, description: str) -> OneLineParser:
    parser = OneLineParser(prog=prog, description=description)
    add_options(parser, cls)
    return parser


def split_args(cls: type[Config], args: argparse.Namespace) -> tuple[dict[str, Any], argparse.Namespace]:
    """The config fields the command line gave, and the parser's other arguments."""
    names = {f.name for f in fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    rest = argparse.Namespace(**{k: v for k, v in vars(args).items() if k not in names})
    return given, rest


def from_sources(cls: type[C], given: Mapping[str, Any], environ: Mapping[str, str]) -> C:
    """Flag, else environment variable (empty counts as unset), else the dataclass default."""
    values = dict(given)
    for f in fields(cls):
        opt = option_of(f)
        if f.name in values or opt is None or opt.env is None or not environ.get(opt.env, "").strip():
            continue
        try:
            values[f.name] = opt.parse(environ[opt.env])
        except ValueError as exc:
            raise ConfigError(_message(opt.env, exc)) from None
    return cls(**values)


def load_or_exit(parser: argparse.ArgumentParser, cls: type[C], argv: Sequence[str] | None,
                 environ: Mapping[str, str], *,
                 adjust: Callable[[dict[str, Any]], None] | None = None) -> tuple[C, argparse.Namespace]:
    """Parse ``argv`` into a ``cls``; any bad value ends the program: one line, exit status 2."""
    given, rest = split_args(cls, parser.parse_args(None if argv is None else list(argv)))
    if adjust is not None:
        adjust(given)
    try:
        return from_sources(cls, given, environ), rest
    except ConfigError as exc:
        parser.error(str(exc))


def exit_bad_config(prog: str, exc: ConfigError) -> NoReturn:
    """For a config parsed outside argparse (the environment only): one line, exit status 2."""
    print(f"{prog}: error: {exc}", file=sys.stderr)
    raise SystemExit(2)


def markdown_table(cls: type[Config]) -> str:
    """The reference table of a config class (docs/configuration.md is built from these)."""
    rows = ["| flag | environment | default | meaning |", "|---|---|---|---|"]
    for f in fields(cls):
        opt = option_of(f)
        if opt is None:
            continue
        default = default_of(f)
        if opt.kind != "value":
            shown = "on" if default else "off"
        elif isinstance(default, bool):
            shown = f"`{str(default).lower()}`"
        else:
            shown = "" if default is None or default == {} else f"`{default}`"
        choices = f" ({', '.join(opt.choices)})" if opt.choices else ""
        rows.append(f"| {f'`{opt.flag}`' if opt.flag else ''} | {f'`{opt.env}`' if opt.env else ''} | {shown} "
                    f"| {opt.help}{choices} |".replace("  ", " "))
    return "\n".join(rows) + "\n"
