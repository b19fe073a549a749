"""Where a `${NAME}` in the config is looked up, and what a message may say about it.

`${NAME}` is looked for, in this order:

1. the environment variable NAME;
2. `$CREDENTIALS_DIRECTORY/NAME` (a unit's own `LoadCredential=NAME:/path`);
3. `$CREDENTIALS_DIRECTORY/meter-gateway_NAME`: the shipped unit loads the one credential
   location, `/etc/meter-gateway/credentials/`, with `LoadCredential=meter-gateway:<dir>`,
   and systemd names every file of a directory `<id>_<file name>`;
4. `/etc/meter-gateway/credentials/NAME` itself, read directly: how `sudo meter-gateway
   check-config` (or `pts submit`) finds what the service is given, outside the service.

`${file:/path}` reads that file. Every secret file is read only if it is a regular file of at
most 64 KiB (core.files), with one trailing line break removed. A secret that cannot be found
is described by where it was looked for; its value, once found, never appears in a message
(`shows_secret`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from core.files import MAX_SECRET_BYTES, FileRefused, read_bounded

#: The one place on disk for credentials (root-only files named like the `${NAME}`).
CREDENTIALS_DIR: Final = Path("/etc/meter-gateway/credentials")
#: The shipped unit's `LoadCredential=` id: systemd names each file `<id>_<file name>`.
CREDENTIAL_ID: Final = "meter-gateway"
#: A `${NAME}` that can be an environment variable and a file name.
_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")
#: Fragments of a secret this long or longer count as showing it.
_FRAGMENT: Final = 8


@dataclass
class SecretLookup:
    """Resolves references; remembers every value found (for `shows_secret`)."""

    environ: Mapping[str, str]
    credentials_dir: Path = CREDENTIALS_DIR
    found: list[str] = field(default_factory=list)

    def resolve(self, reference: str) -> tuple[str | None, str]:
        """(value, "") or (None, where it was looked for and why it was not there)."""
        if reference.startswith("file:"):
            path = reference[5:]
            value, why = _read(Path(path))
            return self._keep(value), "" if value is not None else f"{path!r}: {why}"
        if not _NAME.fullmatch(reference):
            return None, "not a valid name (letters, digits and _ . -)"
        if reference in self.environ:
            return self._keep(self.environ[reference]), ""
        looked = ["not in the environment"]
        directory = self.environ.get("CREDENTIALS_DIRECTORY")
        if directory:
            for name in (reference, f"{CREDENTIAL_ID}_{reference}"):
                value, _ = _read(Path(directory) / name)
                if value is not None:
                    return self._keep(value), ""
            looked.append(f"not in $CREDENTIALS_DIRECTORY ({directory})")
        else:
            looked.append("no $CREDENTIALS_DIRECTORY (only the service has one)")
        on_disk = self.credentials_dir / reference
        value, why = _read(on_disk)
        if value is not None:
            return self._keep(value), ""
        looked.append(f"cannot read {on_disk} ({why})")
        return None, ", ".join(looked)

    def _keep(self, value: str | None) -> str | None:
        if value:
            self.found.append(value)
        return value


def _read(path: Path) -> tuple[str | None, str]:
    try:
        data = read_bounded(path, MAX_SECRET_BYTES)
    except FileRefused as exc:
        reason = exc.reason.removeprefix("cannot read: ")
        if "Permission denied" in reason:
            reason += " (readable by root, and by the service through LoadCredential=)"
        return None, reason
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None, "not UTF-8 text"
    return text.removesuffix("\n").removesuffix("\r"), ""


def shows_secret(message: str, secrets: Iterable[str]) -> bool:
    """Whether `message` contains a secret, in part (8 characters or more), raw or escaped
    the way a `repr()` in a validator's message would show it."""
    whole: set[str] = set()
    fragments: set[str] = set()
    for secret in secrets:
        for form in (secret, repr(secret)[1:-1]):
            if len(form) <= _FRAGMENT:
                if len(form) >= 4:
                    whole.add(form)
                continue
            fragments.update(form[i : i + _FRAGMENT] for i in range(len(form) - _FRAGMENT + 1))
    if any(form in message for form in whole):
        return True
    windows = (message[i : i + _FRAGMENT] for i in range(len(message) - _FRAGMENT + 1))
    return any(window in fragments for window in windows)
