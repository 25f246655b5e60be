"""The images of the canonical form: base64 of the image's bytes, without a media type
(Ollama's `images`). APIs that need one (Anthropic's `media_type`, a data URL) read it
from the bytes here."""

from __future__ import annotations

import base64
import binascii

# the first bytes of each image format the provider APIs take, and its media type
SIGNATURES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
              (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))
HEAD = 24  # base64 digits enough for every signature (18 bytes)


def media_type(data: str) -> str | None:
    """The media type of a base64 image (JPEG, PNG, GIF or WebP); None for another
    format or for what is not base64."""
    try:
        head = base64.b64decode(data[:HEAD], validate=True)
    except (binascii.Error, ValueError, TypeError):
        return None
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    return next((kind for signature, kind in SIGNATURES if head.startswith(signature)), None)
