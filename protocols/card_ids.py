"""A card's pseudonym, and a printed campus-card (一卡通) number read as the UID a reader sends.

Shared by the gateway's card reader driver (which pseudonymises every UID it reads) and central's card
enrolment (which pseudonymises the numbers of an imported list): both must make the same pseudonym
of one card, or an imported card would never open its podium. Neither keeps the number itself.
"""

from __future__ import annotations

import hashlib
import hmac
import re

from protocols.card_line import parse_uid_line

_HEX10 = re.compile(r"^[0-9A-Fa-f]{10}$")
CARD_NUMBER_FORMS = ("8 or 14 hex digits (a 13.56 MHz card's UID), 10 hex digits (an EM4100 card's ID; "
                     "write 0x before one that is all digits), or 10 decimal digits (a 4-byte UID as a number)")


def card_hash(secret: str | bytes, uid: str) -> str:
    """The pseudonym of a card: HMAC-SHA256 of its normalised UID, keyed with the school's secret (hex)."""
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, uid.encode("ascii"), hashlib.sha256).hexdigest()


def card_uid(number: str) -> str:
    """The normalised UID of a printed card number, as the readers report it (upper-case hex); ValueError
    saying which forms are read (never repeating the number: it must not reach a log or a page)."""
    text = number.strip()
    forced_hex = text[:2].lower() == "0x"
    if forced_hex:
        text = text[2:]
    if _HEX10.match(text) and (forced_hex or not text.isdigit()):  # EM4100: version byte + 4 data bytes
        if int(text, 16) == 0:
            raise ValueError("a card number cannot be all zeros")
        return text.upper()
    uid, _why = parse_uid_line(text, "hex" if forced_hex else "auto")
    if uid is None:
        raise ValueError(f"not a card number: write {CARD_NUMBER_FORMS}")
    return uid


def card_pseudonym(secret: str | bytes, number: str) -> str:
    """The pseudonym of a printed card number (`card_uid`, then `card_hash`)."""
    return card_hash(secret, card_uid(number))


def qr_pseudonym(secret: str | bytes, code: str) -> str:
    """The pseudonym of a printed QR check-in code (a student card's code id, e.g. "STU-101-0001").

    HMAC-SHA256 keyed with the school's card secret like `card_hash`, over "qr:" and the code with its
    surrounding blanks removed: the prefix keeps a QR code and a card UID that happen to share their text
    from ever making the same pseudonym. The camera driver on the gateway and central's roster import both
    call this, so a code never leaves the gateway and is never stored by central.
    """
    key = secret.encode("utf-8") if isinstance(secret, str) else secret
    return hmac.new(key, b"qr:" + code.strip().encode("utf-8"), hashlib.sha256).hexdigest()
