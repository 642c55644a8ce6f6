"""Public API of the engine: image bytes in, calibrated verdicts out.

engine = Engine.from_bundles("models/otjr", "models/standard")      # once per process
results = engine.analyse([jpeg_bytes, png_bytes, pil_image])        # Verdict or ImageError per item

The names are loaded on first use (PEP 562), so that ``worker.engine.imaging`` — Pillow only, the checks the API
runs at the door — can be imported without torch and the models: the API process never loads the model code.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_WHERE = {
    "Calibration": "calibration",
    "CalibrationError": "calibration",
    "Combiner": "combiner",
    "fit_combiner": "combiner",
    "DEFAULT_DETECTORS": "detectors",
    "Engine": "engine",
    "EngineError": "engine",
    "Verdict": "engine",
    "load_engine": "engine",
    **dict.fromkeys(
        (
            "ALLOWED_FORMATS",
            "CorruptImage",
            "EmptyImage",
            "ImageError",
            "ImageLimits",
            "TooManyBytes",
            "TooManyFrames",
            "TooManyPixels",
            "TruncatedImage",
            "UnsupportedFormat",
            "decode_image",
            "to_model_input",
        ),
        "images",
    ),
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value
