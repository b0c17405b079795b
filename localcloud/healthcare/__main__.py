"""`python -m localcloud.healthcare --host 127.0.0.1 --port PORT --data-dir DIR`"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path

from werkzeug.serving import make_server

from .app import create_app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localcloud.healthcare", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument(
        "--port", type=int, default=8086, help="0 picks a free port (printed on the ready line)"
    )
    parser.add_argument(
        "--data-dir", type=Path, required=True, help="SQLite index and blobs; kept across restarts"
    )
    parser.add_argument(
        "--operation-delay",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="wait this long before an import/export starts working (observe LROs in flight)",
    )
    parser.add_argument(
        "--storage-host", default=None, help="Cloud Storage endpoint (default: $STORAGE_EMULATOR_HOST)"
    )
    parser.add_argument(
        "--pubsub-host",
        default=None,
        help="Pub/Sub emulator host:port for store notifications (default: $PUBSUB_EMULATOR_HOST)",
    )
    parser.add_argument(
        "--require-auth",
        action="store_true",
        help="answer 401 UNAUTHENTICATED to API calls without a bearer token, as Google does",
    )
    parser.add_argument(
        "--bigquery-url",
        default=None,
        help="local BigQuery (http://host:port) for BigQuery exports and stream configs "
        "(default: $BIGQUERY_EMULATOR_URL)",
    )
    parser.add_argument("--log-level", default="INFO")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    # Request lines would carry DICOM UIDs from QIDO/WADO paths; keep werkzeug to warnings.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    app = create_app(
        args.data_dir,
        storage_host=args.storage_host,
        operation_delay=args.operation_delay,
        pubsub_host=args.pubsub_host,
        require_auth=args.require_auth,
        bigquery_url=args.bigquery_url,
    )
    server = make_server(args.host, args.port, app, threaded=True)
    # SIGTERM ends serve_forever() via SystemExit, so the finally block closes the socket.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print(f"healthcare emulator ready on http://{args.host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
