"""What a body fetched from a URL is, judged by its first bytes (never by its name or
Content-Type): a known media container, an HTML page, something else named (PDF, PNG, JSON, ...),
or unknown binary left to the audio decoder."""

from __future__ import annotations

SNIFF_BYTES = 1024  # the first bytes that say what a body is

_MEDIA = (
    (0, b"RIFF"),  # WAV, AVI
    (0, b"RF64"),
    (0, b"fLaC"),
    (0, b"OggS"),  # Vorbis, Opus, FLAC in Ogg
    (0, b"ID3"),  # MP3 with tags
    (0, b"FORM"),  # AIFF
    (0, b"caff"),
    (0, b"\x1aE\xdf\xa3"),  # Matroska, WebM
    (0, b"0&\xb2u\x8ef\xcf\x11"),  # ASF: WMA, WMV
    (0, b"#!AMR"),
    (0, b".snd"),
    (0, b"FLV"),
    (0, b"wvpk"),
    (0, b"MAC "),
    (0, b"ADIF"),
    (4, b"ftyp"),  # MP4, M4A, MOV, 3GP
)
_NOT_MEDIA = (
    (b"%PDF", "a PDF document"),
    (b"\x89PNG", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"\x7fELF", "a program"),
)


def body_kind(head: bytes) -> str | None:
    """``"media"``, ``"page"`` (HTML), a description of what else it is, or None (unknown
    binary: the decoder decides)."""
    if any(head[at : at + len(magic)] == magic for at, magic in _MEDIA):
        return "media"
    for magic, what in _NOT_MEDIA:
        if head.startswith(magic):
            return what
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0:  # MPEG audio or ADTS AAC frame sync
        return "media"
    if len(head) >= 189 and head[0] == 0x47 and head[188] == 0x47:  # MPEG transport stream
        return "media"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<!doctype html", b"<html")) or (
        text.startswith(b"<") and any(t in head.lower() for t in (b"<html", b"<head", b"<body"))
    ):
        return "page"
    if any(b < 0x09 or 0x0E <= b < 0x20 for b in head):  # control bytes: binary, not text
        return None
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the head
            return None
    if text.startswith(b"<?xml"):
        return "an XML document (a podcast feed? give the URL of one episode)"
    if text.startswith((b"{", b"[")):
        return "JSON"
    return "text"
