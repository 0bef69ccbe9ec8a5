"""``python -m service --config FILE [--port N]``: run the video-dashboard service until
SIGTERM or SIGINT. Exit code 2 with one line on stderr when the configuration, ffmpeg or the
port is wrong; nothing is started then."""

from __future__ import annotations

import argparse
import concurrent.futures
import shutil
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from .analysis import Analyser
from .cameras import CameraWorker
from .config import ConfigError, load
from .media import MediaError, make_test_clip
from .store import Store
from .web import Service, serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="video-dashboard", description=__doc__)
    parser.add_argument("--config", required=True, type=Path, help="the JSON configuration")
    parser.add_argument("--port", type=int, help="overrides the configuration's port (0: any)")
    parser.add_argument("--check", action="store_true", help="check the configuration and exit")
    parser.add_argument(
        "--make-test-clip",
        type=Path,
        metavar="PATH",
        help="write a 4 s clip of a moving box to PATH with the configured ffmpeg, and exit",
    )
    args = parser.parse_args(argv)

    def fail(message: str) -> int:
        print(f"video-dashboard: error: {message}", file=sys.stderr)
        return 2

    try:
        config = load(args.config)
    except ConfigError as exc:
        return fail(str(exc))
    if shutil.which(config.ffmpeg) is None:
        return fail(f"{args.config}: ffmpeg: {config.ffmpeg!r} is not on PATH (install ffmpeg)")
    if args.make_test_clip is not None:
        try:
            make_test_clip(config.ffmpeg, args.make_test_clip)
        except (MediaError, OSError) as exc:
            return fail(f"{args.make_test_clip}: {exc}")
        print(f"video-dashboard: wrote {args.make_test_clip}")
        return 0
    if args.check:
        print(f"video-dashboard: {args.config}: {len(config.cameras)} cameras, configuration ok")
        return 0
    try:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        store = Store(config.data_dir)
    except OSError as exc:
        return fail(f"{args.config}: data_dir: {config.data_dir}: {exc.strerror or exc}")
    analyser = Analyser(config, store)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="analysis")
    cameras = {c.name: CameraWorker(c, config, analyser, store, pool) for c in config.cameras}
    service = Service(config, store, analyser, cameras)
    port = config.port if args.port is None else args.port
    try:
        server = serve(service, config.listen, port)
    except OSError as exc:
        return fail(f"cannot listen on {config.listen}:{port}: {exc.strerror or exc}")

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever, so it must run on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for worker in cameras.values():
        worker.start()
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        for worker in cameras.values():
            worker.stop()
        pool.shutdown(wait=True, cancel_futures=True)
        server.server_close()
        store.close()
    print("video-dashboard: stopped", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
