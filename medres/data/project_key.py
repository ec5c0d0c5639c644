"""The project key and what medres signs with it.

The key (``$MEDRES_PROJECT_KEY``, else a key file generated on first use) makes the index's pseudonyms
(HMAC-SHA256 of the original ids) and signs the files medres writes that later grant trust, such as
the export folders an index's manifest may link into (``private/link_roots.txt``). Both routes take
the same rule: at least :data:`MIN_KEY_CHARS` characters and not a run of a few repeated characters
(a short key is recovered from one known id/pseudonym pair by trying every key).

Torch- and pandas-free: the manifest reader and the index both import it.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

from medres.errors import ConfigError

__all__ = ["KEY_ENV", "DEFAULT_KEY_FILE", "MIN_KEY_CHARS", "project_key", "existing_project_key",
           "write_link_roots", "read_link_roots"]

KEY_ENV = "MEDRES_PROJECT_KEY"
DEFAULT_KEY_FILE = "~/.config/medres/project.key"
MIN_KEY_CHARS = 16
_MIN_DISTINCT = 6  # crude entropy floor: 'aaaa...' or 'abab...' of any length is not a key
_MAKE_KEY = 'python -c "import secrets; print(secrets.token_hex(32))"'

log = logging.getLogger("medres.data.project_key")


def _checked(text: str, source: str) -> bytes:
    """``text`` as key bytes, or a ConfigError saying why it is too weak and how to make one."""
    if len(text) < MIN_KEY_CHARS:
        why = f"holds {len(text)} character(s), fewer than the {MIN_KEY_CHARS} required"
    elif len(set(text)) < _MIN_DISTINCT:
        why = f"repeats {len(set(text))} distinct character(s); at least {_MIN_DISTINCT} are required"
    else:
        return text.encode()
    raise ConfigError(f"the project key ({source}) {why}: a weak key is recovered from one known "
                      "id/pseudonym pair", hint=f"make a key with {_MAKE_KEY} and set it as {KEY_ENV} or "
                                                "write it to the key file (data.index.key_file)")


def _key_path(key_file: str | os.PathLike[str] | None) -> Path:
    return Path(os.path.expanduser(str(key_file or DEFAULT_KEY_FILE)))


def existing_project_key(key_file: str | os.PathLike[str] | None = None) -> bytes | None:
    """The project key (``$MEDRES_PROJECT_KEY`` wins, else the key file), or None when neither exists.

    Raises:
        ConfigError: the key is too short or too repetitive, or the key file cannot be read.
    """
    env = os.environ.get(KEY_ENV, "").strip()
    if env:
        return _checked(env, f"${KEY_ENV}")
    path = _key_path(key_file)
    if not path.exists():
        return None
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the project key file cannot be read ({type(exc).__name__})", path=str(path),
                          hint=f"fix its permissions, or set {KEY_ENV}") from None
    return _checked(text, f"key file {path}")


def project_key(key_file: str | os.PathLike[str] | None = None) -> bytes:
    """The project's key: ``$MEDRES_PROJECT_KEY``, else the key file (created on first use, mode 0600)."""
    key = existing_project_key(key_file)
    if key is not None:
        return key
    path = _key_path(key_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process created it meanwhile
        key = existing_project_key(key_file)
        assert key is not None
        return key
    with os.fdopen(fd, "w") as fh:
        fh.write(secrets.token_hex(32) + "\n")
    log.warning(
        "created the project key %s (readable by you only). It makes the index's pseudonyms (HMAC-SHA256 "
        "of patient ids, accession numbers and UIDs) and signs the folders an index's manifest may link "
        "into. Back it up with the data: without it the pseudonyms can no longer be matched to the "
        "hospital's ids, and a new key gives every patient new pseudonyms. To use a key of your own, set "
        "%s or data.index.key_file instead.", path, KEY_ENV)
    key = existing_project_key(key_file)
    assert key is not None
    return key


# ---------------------------------------------------------------------------------------------------
# private/link_roots.txt: the export folders an index's manifest links into, signed

_LINK_HEADER = "# medres.data.index link roots; hmac-sha256 "
_LINK_SIGNED = re.compile(r"# medres\.data\.index link roots; hmac-sha256 ([0-9a-f]{64})")


def _link_mac(key: bytes, body: str) -> str:
    return hmac.new(key, b"medres link_roots v1\0" + body.encode("utf-8", "surrogateescape"),
                    hashlib.sha256).hexdigest()


def write_link_roots(path: str | os.PathLike[str], roots: Sequence[str], key: bytes) -> None:
    """Write ``roots`` (absolute folders) to ``path``, signed with the project key."""
    from medres.files import atomic_write

    body = "".join(f"{r}\n" for r in roots)
    text = f"{_LINK_HEADER}{_link_mac(key, body)}\n{body}"
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8", errors="surrogateescape"))


def read_link_roots(path: str | os.PathLike[str], key_file: str | os.PathLike[str] | None = None
                    ) -> tuple[list[str], str]:
    """The folders a signed link-roots file names, and ``""``; or ``[]`` and why the file is not trusted.

    A file is trusted only when its signature verifies under this project's key: a data folder that
    merely contains such a file grants nothing. The folders come back as real paths; ``/`` and folders
    that do not exist are left out. A missing file is ``([], "")``.
    """
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        return [], ""
    except OSError as exc:
        return [], f"it cannot be read ({type(exc).__name__})"
    first, _, body = text.partition("\n")
    match = _LINK_SIGNED.fullmatch(first.strip())
    if match is None:
        return [], "it is not signed by medres.data.index"
    try:
        key = existing_project_key(key_file)
    except ConfigError as err:
        return [], f"this project's key is not usable ({err.reason})"
    if key is None:
        return [], f"there is no project key ({KEY_ENV} or the key file) to verify its signature"
    if not hmac.compare_digest(match.group(1), _link_mac(key, body)):
        return [], "its signature does not verify under this project's key"
    roots = [os.path.realpath(x.strip()) for x in body.splitlines() if os.path.isabs(x.strip())]
    return [r for r in roots if os.path.isdir(r) and r != os.path.realpath(os.sep)], ""
