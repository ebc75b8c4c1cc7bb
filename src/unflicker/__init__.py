"""unflicker: blind video deflickering (neural atlas, neural filter, local refinement).

    import unflicker
    unflicker.deflicker("in.mp4", "out.mp4")              # -> RunSummary
    clean = unflicker.deflicker(frames)                   # (T, H, W, 3) array -> same shape and dtype
"""

import importlib

from unflicker.errors import InputError, OutputError, UnflickerError, WeightsError

__version__ = "0.1.0"

_LAZY = {"RunConfig": "unflicker.config", "EngineConfig": "unflicker.config", "SegmentConfig": "unflicker.config",
         "RunSummary": "unflicker.pipeline"}
"""The settings' and the summary's classes, imported where first named (`import unflicker` stays cheap)."""

__all__ = ["EngineConfig", "InputError", "OutputError", "RunConfig", "RunSummary", "SegmentConfig", "UnflickerError",
           "WeightsError", "__version__", "deflicker"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unflicker' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


def deflicker(frames_or_path, output=None, method=None, config=None, **options):
    """Remove flicker from a video file, a frame folder, or an in-memory clip.

    See `unflicker.api.deflicker` for the arguments, what it returns and the errors it raises (every one an
    `UnflickerError`: InputError, OutputError, WeightsError). Imported on first call so that
    `import unflicker` stays cheap (no video, OpenCV or torch libraries at import).
    """
    from unflicker.api import deflicker as _deflicker

    return _deflicker(frames_or_path, output, method, config, **options)
