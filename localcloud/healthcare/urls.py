"""Absolute URLs the DICOMweb answers carry (RetrieveURL, BulkDataURI), like Google's
`https://healthcare.googleapis.com/v1/.../dicomWeb/...`, built from how the client reached us."""

from __future__ import annotations

from flask import Request


def dicomweb_root(request: Request) -> str:
    """`{scheme}://{host}/{version}/{store}/dicomWeb`. A Host header without a port (dicomweb-client
    sends its host name only) gets the port the emulator listens on, unless that is the default."""
    host = request.host
    if ":" not in host.rsplit("]", 1)[-1]:
        port = str(request.environ.get("SERVER_PORT") or "")
        if port and port != ("443" if request.scheme == "https" else "80"):
            host = f"{host}:{port}"
    return f"{request.scheme}://{host}{request.path.rsplit('/dicomWeb/', 1)[0]}/dicomWeb"
