"""Whether the secret key is the one this database's links were signed with.

Every link in every email sent is signed with DRIP_SECRET_KEY. Started with another
key, drip would carry on and every link already sent would answer 404. So the
database keeps a check value of its key (an HMAC of a fixed label: it proves which
key without revealing it), and every command that signs or checks links compares
its key with it at start. The first start records it; a start with a new key while
the recorded one is listed in DRIP_OLD_SECRET_KEYS moves it on (a rotation); any
other key stops the command with one plain line.
"""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError

from drip.db import read_scope, session_scope
from drip.models import Meta
from drip.settings import Settings, SettingsError

KEY_CHECK = "secret_key_check"
_LABEL = b"drip: the key this database's links are signed with"


class KeyMismatch(SettingsError):
    """The key is not the database's; the message says what to do."""


def key_check(secret: str) -> str:
    return hmac.new(secret.encode(), _LABEL, hashlib.sha256).hexdigest()


def _mismatch(settings: Settings) -> KeyMismatch:
    return KeyMismatch(
        "DRIP_SECRET_KEY: this is not the key this database was used with, so the "
        "confirmation and unsubscribe links in emails already sent would not open. "
        "Use the same key everywhere (DRIP_SECRET_KEY, or the file "
        f"{settings.secret_key_file} that drip dev made); to change keys, set the new "
        "one and list the old one in DRIP_OLD_SECRET_KEYS"
    )


def stored_check(engine: Engine) -> str | None:
    with read_scope(engine) as session:
        row = session.get(Meta, KEY_CHECK)
        return row.value if row is not None else None


def inspect_key(engine: Engine, settings: Settings) -> None:
    """Raise KeyMismatch if the key is neither the database's nor its successor; no writes."""
    stored = stored_check(engine)
    if stored is None:
        return
    if not any(hmac.compare_digest(stored, key_check(k)) for k in settings.secret_keys()):
        raise _mismatch(settings)


def adopt_key(engine: Engine, settings: Settings) -> None:
    """`inspect_key`, then record the current key as the database's (first start, rotation)."""
    current = key_check(settings.require_secret())
    for attempt in (1, 2):
        try:
            with session_scope(engine) as session:
                row = session.get(Meta, KEY_CHECK, with_for_update=True)
                if row is None:
                    session.add(Meta(name=KEY_CHECK, value=current))
                    return
                if hmac.compare_digest(row.value, current):
                    return
                old = [key_check(k) for k in settings.old_secrets()]
                if not any(hmac.compare_digest(row.value, check) for check in old):
                    raise _mismatch(settings)
                row.value = current  # a rotation: the old key still verifies, the new one signs
                session.add(row)
                return
        except IntegrityError:  # another process recorded it first: compare with theirs
            if attempt == 2:
                raise
