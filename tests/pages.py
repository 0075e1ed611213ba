"""What a saved report holds, read the way its page reads it: the data (inline JSON or gzip+base64)."""

from __future__ import annotations

import base64
import gzip
import json
import re


def page_data(text: str) -> dict:
    """The JSON the report embeds for its script, inflated when it is packed."""
    match = re.search(r'<script type="application/(json|octet-stream)" id="vg-data"[^>]*>(.*?)</script>', text, re.S)
    assert match, "no data script in the report"
    kind, body = match.groups()
    return json.loads(gzip.decompress(base64.b64decode(body)) if kind == "octet-stream" else body)
