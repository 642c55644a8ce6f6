"""The text forms the OpenAPI document promises and the handlers check: one definition for both
(``scanner.api.openapi`` writes them into the document, ``scanner.api.audits`` matches request bodies
against them)."""

from __future__ import annotations

# An absolute http(s) URL with a host, as ``intake._check_page_url`` accepts it: ``urlsplit`` finds the scheme http
# or https and a non-empty hostname (the netloc after its last "@", before its first ":").  ASCII netlocs only,
# without brackets: ``urlsplit`` checks bracketed (IPv6) and non-ASCII hosts further.  Tab, CR and LF, which
# ``urlsplit`` deletes, are left out.
_NETLOC_CHARS = r"\x01-\x08\x0b\x0c\x0e-\x22\x24-\x2e\x30-\x39\x3b-\x3e\x41-\x5a\x5c\x5e-\x7f"  # not #/:?@[]
_USERINFO = rf"(?:[{_NETLOC_CHARS}:@]*@)?"
_HOST = rf"[{_NETLOC_CHARS}]{{1,253}}"  # at most a DNS name's length: sites.host holds 255 characters
_PORT = rf"(?::[{_NETLOC_CHARS}:]*)?"
HTTP_URL = rf"[Hh][Tt][Tt][Pp][Ss]?://{_USERINFO}{_HOST}{_PORT}(?:[/?#][^\x00]*)?"
# What the service fetches on a tenant's behalf later (an audit's start URL, a webhook): a host name or a
# bracketed IPv6 literal; the fetcher then refuses what it must (bad_url, blocked_address, blocked_port).
_IPV6_HOST = r"\[[0-9A-Fa-f:.]{2,45}\]"
TARGET_URL = rf"[Hh][Tt][Tt][Pp][Ss]?://{_USERINFO}(?:{_HOST}|{_IPV6_HOST}){_PORT}(?:[/?#][^\x00]*)?"
# Text the API stores has no NUL (PostgreSQL refuses it): ``scanner.api.text`` answers 422 for it.
NO_NUL = r"^[^\x00]*$"

# A report cursor: unpadded URL-safe base64 of ``v1:<verdict id>`` ("djE6" is "v1:").  The groups spell the
# base64 of ASCII digits: three digits make four characters, one or two left over make two or three (whose
# last character carries bits the decoder ignores).
_THREE_DIGITS = "(?:[MN][DTjz]|O[DT])[AEIMQUYcgk][wxyz0-5]"
_ONE_DIGIT = "(?:[MN][A-Za-z0-9_-]|O[A-Za-f])"
_TWO_DIGITS = "(?:[MN][DTjz]|O[DT])[A-Za-n]"
CURSOR_MAX_LENGTH = 28  # ids of up to 18 digits: below SQLite's 2**63
CURSOR = rf"djE6(?:{_THREE_DIGITS})*(?:{_THREE_DIGITS}|{_ONE_DIGIT}|{_TWO_DIGITS})"

# Audit schedules the API accepts (and the document promises): intervals of 1 to 999 units, and cron
# expressions whose fields are "*", "*/step" or one number in range.  `scanner audit add` takes more of both.
_CRON_FIELDS = ("[0-5]?[0-9]", "[01]?[0-9]|2[0-3]", "[1-9]|1[0-9]|2[0-8]", "[1-9]|1[0-2]", "[0-6]")
EVERY = "[1-9][0-9]{0,2}[smhd]"
CRON = " ".join(rf"(?:\*(?:/[1-9])?|{field})" for field in _CRON_FIELDS)
