"""Credentials and transport for a PACS: where they come from, and the HTTP session that carries them.

Credentials are never taken from the command line (``ps`` shows it). In order:

1. ``--credentials FILE``: ``user=...`` and ``password=...`` lines, or ``token=...``; the file must be
   readable by its owner only (mode 0600 or stricter), else it is refused;
2. the environment: ``MEDRES_PACS_TOKEN`` (a bearer token), or ``MEDRES_PACS_USER`` and
   ``MEDRES_PACS_PASSWORD`` (HTTP basic);
3. ``~/.netrc``, which ``requests`` reads itself when nothing else is given.

TLS is verified against the system's CAs or ``--ca-bundle``; ``--insecure`` turns verification off
with a warning.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from medres.errors import ConfigError, DataError

__all__ = ["ServerUnavailable", "Credentials", "read_credentials", "http_session", "server_name",
           "USER_ENV", "PASSWORD_ENV", "TOKEN_ENV"]

USER_ENV, PASSWORD_ENV, TOKEN_ENV = "MEDRES_PACS_USER", "MEDRES_PACS_PASSWORD", "MEDRES_PACS_TOKEN"
log = logging.getLogger("medres.data.pacs")


class ServerUnavailable(DataError):
    """The server as a whole cannot be used (refused credentials, no connection): stop, do not go on."""


@dataclass(frozen=True)
class Credentials:
    """HTTP basic (user, password) or a bearer token; ``repr`` never shows the secret."""

    user: str | None = None
    password: str | None = None
    token: str | None = None
    source: str = "none"  # where they came from, for messages: "--credentials FILE", "$MEDRES_PACS_USER"

    def __repr__(self) -> str:
        kind = "token" if self.token else "basic" if self.user else "none"
        return f"Credentials({kind} from {self.source})"

    __str__ = __repr__


def server_name(url: str) -> str:
    """``url`` without any user:password part or query: what messages may name."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _owner_only(path: Path) -> None:
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"the credentials file cannot be read ({type(exc).__name__})", path=str(path),
                          hint="pass a file with user=/password= or token= lines") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"the credentials file is readable by others (mode {stat.S_IMODE(mode):o})",
                          path=str(path), hint=f"make it yours only: chmod 600 {path}")


def read_credentials(path: str | os.PathLike[str] | None = None) -> Credentials:
    """The credentials of ``--credentials path``, else of the environment, else none (``~/.netrc``)."""
    if path is not None:
        path = Path(path).expanduser()
        _owner_only(path)
        values: dict[str, str] = {}
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"the credentials file cannot be read ({type(exc).__name__})",
                              path=str(path), hint="a UTF-8 file of user=/password= or token=") from None
        for line in text.splitlines():
            key, sep, value = line.strip().partition("=")
            if sep and not key.startswith("#"):
                values[key.strip().lower()] = value.strip()
        unknown = sorted(set(values) - {"user", "password", "token"})
        if unknown or not (values.get("token") or values.get("user")):
            raise ConfigError("the credentials file holds no user= (with password=) or token= line"
                              + (f"; unknown keys {unknown}" if unknown else ""), path=str(path),
                              hint="write 'user=NAME' and 'password=SECRET' lines, or one 'token=TOKEN' line")
        return Credentials(values.get("user") or None, values.get("password", ""),
                           values.get("token") or None, source=f"--credentials {path}")
    if os.environ.get(TOKEN_ENV):
        return Credentials(token=os.environ[TOKEN_ENV], source=f"${TOKEN_ENV}")
    if os.environ.get(USER_ENV):
        return Credentials(os.environ[USER_ENV], os.environ.get(PASSWORD_ENV, ""), source=f"${USER_ENV}")
    return Credentials(source="~/.netrc or none")


def http_session(credentials: Credentials, *, ca_bundle: str | None = None, insecure: bool = False,
                 retries: int = 3, backoff_s: float = 0.5, workers: int = 4):  # -> requests.Session
    """A ``requests`` session with the credentials, TLS settings, a connection pool for ``workers``
    threads and retries with exponential backoff on connection errors and 502/503/504 answers."""
    import requests
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    class _Session(requests.Session):
        """$REQUESTS_CA_BUNDLE/$CURL_CA_BUNDLE would replace the session's own verify (--ca-bundle,
        --insecure) on every request: the options given here win."""

        def merge_environment_settings(self, url, proxies, stream, verify, cert):  # type: ignore[no-untyped-def]
            settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
            if verify is None and self.verify is not True:
                settings["verify"] = self.verify
            return settings

    session = _Session()
    if credentials.token:
        session.headers["Authorization"] = f"Bearer {credentials.token}"
        session.trust_env = False  # .netrc would replace the bearer header
    elif credentials.user:
        session.auth = (credentials.user, credentials.password or "")
    if insecure:
        log.warning("--insecure: the server's TLS certificate is NOT verified; anyone on the path can read "
                    "and change what is sent and received")
        session.verify = False
    elif ca_bundle:
        if not Path(ca_bundle).is_file():
            raise ConfigError("the CA bundle does not exist", path=ca_bundle,
                              hint="pass a PEM file of the certificate authorities that sign the server")
        session.verify = ca_bundle
    retry = Retry(total=retries, connect=retries, read=retries, status=retries, backoff_factor=backoff_s,
                  status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False)
    adapter = HTTPAdapter(max_retries=retry, pool_connections=max(4, workers), pool_maxsize=max(4, workers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session
