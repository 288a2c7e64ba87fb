"""API keys: the key ring ``ernie-serve`` checks bearer tokens against.

Keys come from ``--api-key`` (one key, named ``default``) and from ``--api-key-file``: one key a
line, either ``key`` (named ``default``) or ``name:key``; blank lines and lines starting with ``#``
are skipped. The file is read again on SIGHUP, so keys rotate without a restart; a file that no
longer reads keeps the keys in force and logs why.

A key's *name* is what the rest of the server may know about the caller (tenant attribution, logs);
the key itself is never logged, put in telemetry or echoed in an error. Every check compares the
token with every key in constant time, so the time taken says nothing about how close a guess was
or which key it was close to.
"""

from __future__ import annotations

import hmac
import logging
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_KEY_NAME = "default"
# A name ends up in logs and, through tenant attribution, in metric labels: keep it tame.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}")


class KeyFileError(ValueError):
    """The key file cannot be used (the message never contains a key)."""


@dataclass(frozen=True)
class _Key:
    name: str
    secret: bytes


def parse_key_file(text: str, source: str) -> list[_Key]:
    keys: list[_Key] = []
    seen: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, secret = line.partition(":")
        if not sep:
            name, secret = DEFAULT_KEY_NAME, line
        name, secret = name.strip(), secret.strip()
        if not _NAME.fullmatch(name):
            raise KeyFileError(f"{source}, line {number}: a key name is 1-64 letters, digits, '_', '.' or '-', "
                               "starting with a letter or digit")
        if len(secret) < 8 or any(c.isspace() for c in secret):
            raise KeyFileError(f"{source}, line {number}: a key is at least 8 characters without spaces")
        encoded = secret.encode()
        if encoded in seen:
            raise KeyFileError(f"{source}, line {number}: the same key appears twice")
        seen.add(encoded)
        keys.append(_Key(name, encoded))
    if not keys:
        raise KeyFileError(f"{source}: no keys (one 'key' or 'name:key' a line)")
    return keys


class KeyRing:
    """The keys a request may present; empty means no key is required."""

    def __init__(self, api_key: str | None = None, key_file: str | Path | None = None) -> None:
        self._api_key = [_Key(DEFAULT_KEY_NAME, api_key.encode())] if api_key else []
        self._file = Path(key_file) if key_file is not None else None
        self._keys: tuple[_Key, ...] = tuple(self._api_key)
        if self._file is not None:
            self._keys = (*self._api_key, *self._read())

    def _read(self) -> list[_Key]:
        assert self._file is not None
        try:
            text = self._file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyFileError(f"cannot read the API key file {self._file}: {exc}") from None
        return parse_key_file(text, str(self._file))

    @property
    def required(self) -> bool:
        return bool(self._keys)

    def names(self) -> list[str]:
        return sorted({k.name for k in self._keys})

    def reload(self) -> bool:
        """Read the key file again (SIGHUP); on failure keep the keys in force. True if reloaded."""
        if self._file is None:
            return False
        try:
            keys = self._read()
        except KeyFileError as exc:
            log.error("API keys not reloaded, the previous %d stay in force: %s", len(self._keys), exc)
            return False
        self._keys = (*self._api_key, *keys)  # one assignment: a request sees the old set or the new
        log.info("API keys reloaded from %s: %d keys, names %s", self._file, len(self._keys), self.names())
        return True

    def identify(self, token: str | None) -> str | None:
        """The name of the key ``token`` is, or None. Takes the same time whichever key matches."""
        keys = self._keys  # one consistent set even if a reload swaps it meanwhile
        presented = (token or "").encode("utf-8", "surrogateescape")
        found: str | None = None
        for key in keys:  # no early exit: every key is compared
            if hmac.compare_digest(presented, key.secret) and found is None:
                found = key.name
        return found if token else None
