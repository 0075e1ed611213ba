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


def page_layouts(text: str) -> list[str]:
    """The SVG of every layout the report carries, inline (``<template>``) or packed (gzip+base64)."""
    inline = re.findall(r'<template id="vg-layout-\d+">(.*?)</template>', text, re.S)
    packed = re.findall(r'<script type="application/octet-stream" id="vg-layout-\d+"[^>]*>(.*?)</script>', text, re.S)
    return inline + [gzip.decompress(base64.b64decode(body)).decode("utf-8") for body in packed]
