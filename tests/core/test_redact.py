"""The one redaction step: every form an echo can carry a secret in is masked."""

from __future__ import annotations

import base64
import json
import re
from urllib.parse import quote, quote_plus

from core.redact import MASK, Redactor

SECRET = "pw/Zq81+ne=ver&shown"


def test_every_form_of_a_secret_is_masked_inside_text() -> None:
    redactor = Redactor([SECRET, "user-name-1"], [("user-name-1", SECRET)])
    basic = base64.b64encode(f"user-name-1:{SECRET}".encode()).decode()
    forms = [
        SECRET,
        quote(SECRET, safe=""),
        re.sub("%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(SECRET, safe="")),
        quote_plus(SECRET),
        json.dumps(SECRET)[1:-1],
        basic,
        basic.rstrip("="),
    ]
    for form in forms:
        assert redactor.text(f"you sent [{form}] back") == f"you sent [{MASK}] back", form


def test_a_short_secret_is_masked_only_as_a_whole_value() -> None:
    redactor = Redactor(["demo"])
    assert redactor.value({"user": "demo", "note": "demo site"}) == {
        "user": MASK,
        "note": "demo site",
    }
