"""Which values of a config are secrets, for the one redaction step (core.redact).

Secrets are the SecretStr fields at any depth. Basic-auth pairs are (user, password) fields of
one section (`username`/`user`/`client_id` with `password`/`client_secret`), whether or not
the user part is itself a secret: a server that echoes an `Authorization` header shows their
base64 token, which holds the password.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import BaseModel, SecretStr

from core import redact

_USER_FIELDS = ("username", "user", "client_id")
_PASSWORD_FIELDS = ("password", "client_secret")


def _plain(value: Any) -> str | None:
    if isinstance(value, SecretStr):
        return value.get_secret_value() or None
    return value if isinstance(value, str) and value else None


def _nodes(value: Any) -> Iterator[Any]:
    """`value` and everything inside it: model fields, dict values, list items, at any depth."""
    yield value
    if isinstance(value, BaseModel):
        children: Iterable[Any] = (getattr(value, name) for name in type(value).model_fields)
    elif isinstance(value, dict):
        children = value.values()
    elif isinstance(value, list | tuple):
        children = value
    else:
        return
    for child in children:
        yield from _nodes(child)


def _models(value: Any) -> Iterator[BaseModel]:
    return (node for node in _nodes(value) if isinstance(node, BaseModel))


def secret_values(model: BaseModel) -> list[str]:
    """Every secret value in a config (SecretStr fields, at any depth), longest first."""
    found: set[str] = set()
    walked = (node.get_secret_value() for node in _nodes(model) if isinstance(node, SecretStr))
    found.update(secret for secret in walked if secret)
    return sorted(found, key=len, reverse=True)


def secret_pairs(model: BaseModel) -> list[tuple[str, str]]:
    """(user, password) of every section that holds both (basic-auth candidates)."""
    pairs = []
    for section in _models(model):
        fields = type(section).model_fields
        for user_field in _USER_FIELDS:
            for password_field in _PASSWORD_FIELDS:
                if user_field in fields and password_field in fields:
                    user = _plain(getattr(section, user_field))
                    password = _plain(getattr(section, password_field))
                    if user and password:
                        pairs.append((user, password))
    return pairs


def redactor_for(model: BaseModel) -> redact.Redactor:
    """A redactor of this config's secrets alone (the status document uses one)."""
    return redact.Redactor(secret_values(model), secret_pairs(model))


def learn_config(model: BaseModel) -> None:
    """Teach the process's redactor every secret of `model` (log, MQTT, store, CLI mask them)."""
    redact.learn(secret_values(model), secret_pairs(model))
