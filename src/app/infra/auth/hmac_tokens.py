"""The common token, checked without pyjwt's per-call work: an accept-only fast path.

flowgate is usually configured with one HMAC algorithm and one secret. Every connect then
verifies a token of that algorithm, and pyjwt's ``decode`` cost 49 µs of a connect's 0.69 ms
of server CPU in the benchmark (9 %, three times its cost in a tight loop). Half of it, hot, is
pyjwt 2.15's handling of the three segments, mostly a Python generator over every byte that
checks the base64url alphabet; the rest is its option merging and claim checks, general over
every algorithm and option, made per call.

:class:`HmacTokenCheck` accepts a token only when it is plainly valid: compact, canonical
base64url, a header naming exactly the configured algorithm and nothing that pyjwt would
treat specially (``crit``, ``b64``, a ``kid`` that is not a string), a signature that matches,
a payload that is one strict JSON object, and claims that pass each of pyjwt's checks for the
options flowgate uses. For anything else it answers None, and pyjwt decides, with its own
errors. It never refuses, so it can only be as strict as pyjwt or stricter, never more
lenient: ``tests/unit/auth/test_hmac_tokens.py`` holds it to pyjwt's answer on valid, tampered
and malformed tokens.

Measured: 8.8 against 18.2 µs per verify in a tight loop (6.4 since accepted header segments
are remembered); in the benchmark's connects (8 at a time, new chats on PostgreSQL) the
server's CPU per connect went 0.675 → 0.646 ms.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

#: Header parameters pyjwt acts on beyond ``alg``: a token that names one is left to pyjwt.
_SPECIAL_HEADERS = frozenset({"crit", "b64", "jku", "jwk", "x5u", "x5c"})
#: Header segments already found acceptable, remembered (a segment's verdict depends on its
#: bytes alone): an issuer's tokens share a handful of headers, so a connect skips their
#: base64 and JSON (3 of the check's 9 µs). Bounded, so a client minting headers cannot grow it.
MAX_KNOWN_HEADERS = 64


class HmacTokenCheck:
    """``check(token)``: its payload if it is plainly valid for ``alg`` and ``keyed``, else None
    (pyjwt then decides)."""

    def __init__(
        self,
        alg: str,
        keyed: Any,
        *,
        audience: str | None,
        issuer: str | None,
        leeway: float,
        strict_json: Callable[[bytes], Any],
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``keyed``: an HMAC keyed with the secret (copied per token); ``strict_json``: the
        payload parser that refuses a repeated key (the one the pyjwt path uses)."""
        self._alg = alg
        self._keyed = keyed
        self._audience = audience
        self._issuer = issuer
        self._leeway = leeway
        self._strict_json = strict_json
        self._clock = clock
        self._known_headers: set[bytes] = set()

    def check(self, token: str) -> dict[str, Any] | None:
        if not token.isascii():
            return None
        segments = token.encode("ascii").split(b".")
        if len(segments) != 3:
            return None
        header_part, payload_part, signature_part = segments
        if header_part not in self._known_headers and not self._header_passes(header_part):
            return None
        payload_data = _canonical_base64url(payload_part)
        signature = _canonical_base64url(signature_part)
        if payload_data is None or signature is None:
            return None
        keyed = self._keyed.copy()
        keyed.update(header_part + b"." + payload_part)
        if not hmac.compare_digest(keyed.digest(), signature):
            return None
        try:
            payload = self._strict_json(payload_data)
        except Exception:  # refused or not JSON: pyjwt gives the error
            return None
        if not isinstance(payload, dict) or not self._claims_pass(payload):
            return None
        return payload

    def _header_passes(self, header_part: bytes) -> bool:
        """The header segment names exactly this algorithm and nothing pyjwt treats specially
        (then it is remembered)."""
        header_data = _canonical_base64url(header_part)
        if header_data is None:
            return False
        try:
            header = json.loads(header_data)  # as pyjwt reads it
        except (ValueError, RecursionError):
            return False
        if not isinstance(header, dict) or header.get("alg") != self._alg:
            return False
        if not _SPECIAL_HEADERS.isdisjoint(header) or not isinstance(header.get("kid", ""), str):
            return False
        if len(self._known_headers) >= MAX_KNOWN_HEADERS:
            self._known_headers.clear()
        self._known_headers.add(header_part)
        return True

    def _claims_pass(self, payload: dict[str, Any]) -> bool:
        """pyjwt's claim checks for flowgate's options: ``exp`` present and not past, ``iat``
        and ``nbf`` not ahead, ``iss`` and ``aud`` if configured, ``jti`` a string; ``sub`` is
        not checked here (flowgate reads it itself)."""
        now, leeway = self._clock(), self._leeway
        if payload.get("exp") is None:
            return False
        if "iat" in payload:
            iat = _as_int(payload["iat"])
            if iat is None or iat > now + leeway:
                return False
        if "nbf" in payload:
            nbf = _as_int(payload["nbf"])
            if nbf is None or nbf > now + leeway:
                return False
        exp = _as_int(payload["exp"])
        if exp is None or exp <= now - leeway:
            return False
        if self._issuer is not None and payload.get("iss") != self._issuer:
            return False
        if self._audience is not None and not _audience_matches(payload.get("aud"), self._audience):
            return False
        return "jti" not in payload or isinstance(payload["jti"], str)


def _canonical_base64url(segment: bytes) -> bytes | None:
    """The decoded segment if it is the unpadded canonical base64url of what it decodes to,
    else None: so no padding, no character outside the alphabet (which ``b64decode`` would
    skip), no stray bits in the last character. pyjwt accepts each of these segments too."""
    try:
        decoded = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    if base64.urlsafe_b64encode(decoded).rstrip(b"=") != segment:
        return None
    return decoded


def _as_int(value: Any) -> int | None:
    """``int(value)``, as pyjwt reads a time claim (so ``"12"`` and ``12.9`` count, as there)."""
    try:
        return int(value)
    except (ValueError, TypeError, OverflowError):
        return None


def _audience_matches(claim: Any, audience: str) -> bool:
    """pyjwt's non-strict audience check for one configured audience."""
    if not claim:
        return False
    claims = [claim] if isinstance(claim, str) else claim
    if not isinstance(claims, list) or not all(isinstance(c, str) for c in claims):
        return False
    return audience in claims
