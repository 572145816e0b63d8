"""NATS nkeys: the identities users authenticate to NATS with (schema v2).

An nkey is an Ed25519 key pair in NATS's own text form. A user's *public* nkey
(56 characters of base32, starting with ``U``) lives in the user record; the seed
(``SU…``) stays with the user and never reaches ``membershipd``. The server's
authorization is generated from the allowlist's public nkeys
(:mod:`membership.authz`).

The text form is base32 (no padding) of: one prefix byte (``U`` for a user: 20 << 3),
the 32-byte public key, and a CRC-16/XMODEM of both, little-endian. This module
checks that form exactly -- a typo in an nkey would otherwise reach the server's
configuration and make every reload fail -- and makes key pairs for the service's
own identity and for tests.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
from pathlib import Path
from typing import Final

from .errors import InvalidInputError

__all__ = [
    "NKEY_LENGTH",
    "UserKeyPair",
    "crc16",
    "generate_user_keypair",
    "read_seed_file",
    "user_keypair_from_raw",
    "user_keypair_from_seed",
    "validate_nkey",
]

NKEY_LENGTH: Final = 56
"""Characters of a public nkey: base32 of 1 + 32 + 2 bytes."""
_PREFIX_USER: Final = 20 << 3  # "U"
_ALPHABET: Final = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")


def crc16(data: bytes) -> int:
    """CRC-16/XMODEM (polynomial 0x1021, initial 0), the checksum of nkeys."""
    crc = 0
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc


def validate_nkey(value: object, what: str = "nkey") -> str:
    """Return ``value`` if it is a user's public nkey (``U`` + 55 base32 characters,
    checksum intact); :class:`InvalidInputError` naming the problem otherwise.

    A seed (``SU…``) is refused with its own message: it is a secret and does not
    belong in the allowlist. The message never repeats a seed.
    """
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if value.startswith("S"):
        raise InvalidInputError(
            f"{what} looks like an nkey *seed* (it starts with S); give the public key "
            "(it starts with U) and keep the seed secret"
        )
    if len(value) != NKEY_LENGTH or not value.startswith("U") or not _ALPHABET.issuperset(value):
        shown = value if len(value) <= 60 and value.isprintable() else value[:20] + "…"
        raise InvalidInputError(
            f"{what} {shown!r} is not a user's public nkey "
            f"({NKEY_LENGTH} base32 characters starting with U)"
        )
    raw = base64.b32decode(value)  # 56 characters: exactly 35 bytes, no padding
    if raw[0] != _PREFIX_USER or crc16(raw[:-2]) != int.from_bytes(raw[-2:], "little"):
        raise InvalidInputError(f"{what} {value!r} has a bad checksum (a typo?)")
    return value


class UserKeyPair:
    """A user nkey pair: ``public`` for the allowlist, ``seed`` for connecting.

    ``repr`` never shows the seed.
    """

    __slots__ = ("public", "seed")

    def __init__(self, seed: bytes, public: str) -> None:
        self.seed = seed
        self.public = public

    def __repr__(self) -> str:
        return f"UserKeyPair(public={self.public!r})"


def user_keypair_from_seed(seed: bytes | str) -> UserKeyPair:
    """The key pair of a user seed (``SU…``); :class:`InvalidInputError` if it is not one."""
    raw = seed.encode("ascii", "replace") if isinstance(seed, str) else bytes(seed)
    raw = raw.strip()
    import nkeys  # here, not at the top: only making key pairs needs the signing library

    try:
        pair = nkeys.from_seed(bytearray(raw))
        public = pair.public_key.decode("ascii")
    except (nkeys.NkeysError, binascii.Error, ValueError, IndexError):
        raise InvalidInputError("not a valid nkey seed (expected the SU… form)") from None
    if not public.startswith("U"):
        raise InvalidInputError("the nkey seed is not a *user* seed (its public key must start U)")
    return UserKeyPair(raw, validate_nkey(public))


def user_keypair_from_raw(raw: bytes) -> UserKeyPair:
    """The user key pair whose Ed25519 seed is the 32 bytes ``raw``."""
    if len(raw) != 32:
        raise InvalidInputError(f"an nkey seed is 32 bytes, not {len(raw)}")
    import nkeys

    return user_keypair_from_seed(bytes(nkeys.encode_seed(raw, nkeys.PREFIX_BYTE_USER)))


def generate_user_keypair() -> UserKeyPair:
    """A fresh random user key pair."""
    return user_keypair_from_raw(secrets.token_bytes(32))


def read_seed_file(path: str | os.PathLike[str], what: str = "--seed-file") -> UserKeyPair:
    """Read a user seed from a file readable by its owner only (like ``--cluster-pass-file``).

    A missing or empty file, or one that group or others can read, is an error: a
    seed is a secret.
    """
    p = Path(path)
    try:
        with p.open("rb") as handle:
            mode = os.fstat(handle.fileno()).st_mode
            data = handle.read()
    except OSError as exc:
        raise InvalidInputError(f"{what} {p}: cannot read it ({exc.strerror})") from None
    if mode & 0o077:
        raise InvalidInputError(
            f"{what} {p} is readable by group or others (mode {mode & 0o777:o}); "
            f"`chmod 600 {p}` first"
        )
    if not data.strip():
        raise InvalidInputError(f"{what} {p} is empty")
    try:
        return user_keypair_from_seed(data)
    except InvalidInputError as exc:
        raise InvalidInputError(f"{what} {p}: {exc}") from None
