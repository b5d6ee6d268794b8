"""Static images (PNG / SVG / PDF) of figures through kaleido.

Owns the export browser: ``find_browser`` (the Chromium kaleido would use), ``NO_BROWSER`` (what
to install when there is none), ``ImageExporter`` (ONE long-lived headless Chromium per exporter
on a private event loop: the first image pays the browser start, later ones don't; a failed
render restarts it) and ``shared_exporter`` (the process-wide one the UI and the CLI share,
closed at exit). No browser gives ``ExportUnavailable`` at once, never a hang.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import TimeoutError as FutureTimeout

import plotly.graph_objects as go

from workbench.errors import BadRequest, ExportUnavailable
from workbench.export.style import PNG_DPI, PX_PER_INCH, PaperStyle

log = logging.getLogger("layerlens.export")

FORMATS = ("svg", "png", "pdf")


def find_browser() -> str | None:
    """The Chromium kaleido would use ($BROWSER_PATH, then the usual names), or None."""
    from choreographer.browsers.chromium import Chromium

    path = Chromium.find_browser(skip_local=False)
    return path if path and os.access(path, os.X_OK) else None


NO_BROWSER = (
    "Static figure export (PNG/SVG/PDF) needs a Chromium browser and none was found. Install Debian's "
    "`chromium` (sudo apt-get install chromium) or set BROWSER_PATH to a Chrome/Chromium binary. "
    "The interactive charts, their camera button and the data (CSV) export work without it."
)


class ImageExporter:
    """One headless Chromium, kept open for the life of the process, renders every image.

    Calls from any thread are serialised onto a private asyncio loop. A render that fails or
    times out closes the browser, so the next call starts a fresh one.
    """

    def __init__(self, timeout_s: float = 90.0, find: Callable[[], str | None] = find_browser):
        self.timeout_s = timeout_s
        self._find = find
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._kaleido = None
        self.renders = 0

    def render(self, fig: go.Figure, fmt: str, style: PaperStyle) -> bytes:
        """The figure (already styled) as ``fmt`` bytes at the style's size."""
        if fmt not in FORMATS:
            raise BadRequest(f"Unknown image format {fmt!r}. Formats: {', '.join(FORMATS)}.")
        opts = {"format": fmt, "width": style.width_px, "height": style.height_px,
                "scale": PNG_DPI / PX_PER_INCH if fmt == "png" else 1}
        with self._lock:
            self._ensure_open()
            try:
                data = self._call(self._kaleido.calc_fig(fig.to_dict(), opts=opts))
            except Exception as exc:
                self._close_locked()
                raise ExportUnavailable(f"Rendering the {fmt.upper()} failed ({type(exc).__name__}: {exc}). "
                                        "Try again; the export browser has been restarted.") from exc
            self.renders += 1
            return data

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    @property
    def is_open(self) -> bool:
        return self._kaleido is not None

    def _ensure_open(self) -> None:
        if self._kaleido is not None:
            return
        browser = self._find()
        if not browser:
            raise ExportUnavailable(NO_BROWSER)
        loop = asyncio.new_event_loop()
        threading.Thread(target=loop.run_forever, name="layerlens-export", daemon=True).start()
        self._loop = loop
        try:
            self._kaleido = self._call(_open_kaleido(browser, self.timeout_s))
        except Exception as exc:
            self._close_locked()
            raise ExportUnavailable(f"The export browser ({browser}) did not start: {type(exc).__name__}: {exc}. "
                                    f"{NO_BROWSER}") from exc

    def _call(self, coroutine):
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result(timeout=self.timeout_s + 30)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"no answer from the export browser within {self.timeout_s + 30:.0f} s") from None

    def _close_locked(self) -> None:
        loop, kaleido, self._loop, self._kaleido = self._loop, self._kaleido, None, None
        if loop is None:
            return
        if kaleido is not None:
            try:
                asyncio.run_coroutine_threadsafe(kaleido.close(), loop).result(timeout=20)
            except Exception:  # the browser may already be gone; the loop is dropped anyway
                log.warning("closing the export browser failed", exc_info=True)
        loop.call_soon_threadsafe(loop.stop)


async def _open_kaleido(browser: str, timeout_s: float):
    import kaleido

    instance = kaleido.Kaleido(n=1, timeout=timeout_s, mathjax=False, path=browser)
    await instance.open()
    return instance


_EXPORTER: ImageExporter | None = None
_EXPORTER_LOCK = threading.Lock()


def shared_exporter() -> ImageExporter:
    """The process-wide exporter (the UI and the CLI share one browser)."""
    global _EXPORTER
    with _EXPORTER_LOCK:
        if _EXPORTER is None:
            _EXPORTER = ImageExporter()
            atexit.register(_EXPORTER.close)  # no orphaned Chromium when the server stops
        return _EXPORTER
