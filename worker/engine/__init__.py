"""Public API of the engine: image bytes in, calibrated verdicts out.

engine = Engine.from_bundles("models/otjr", "models/standard")      # once per process
results = engine.analyse([jpeg_bytes, png_bytes, pil_image])        # Verdict or ImageError per item
"""

from worker.engine.calibration import Calibration, CalibrationError
from worker.engine.combiner import Combiner, fit_combiner
from worker.engine.detectors import DEFAULT_DETECTORS
from worker.engine.engine import Engine, EngineError, Verdict, load_engine
from worker.engine.images import (
    ALLOWED_FORMATS,
    CorruptImage,
    EmptyImage,
    ImageError,
    ImageLimits,
    TooManyBytes,
    TooManyFrames,
    TooManyPixels,
    TruncatedImage,
    UnsupportedFormat,
    decode_image,
    to_model_input,
)

__all__ = [
    "ALLOWED_FORMATS",
    "DEFAULT_DETECTORS",
    "Calibration",
    "CalibrationError",
    "Combiner",
    "CorruptImage",
    "EmptyImage",
    "Engine",
    "EngineError",
    "ImageError",
    "ImageLimits",
    "TooManyBytes",
    "TooManyFrames",
    "TooManyPixels",
    "TruncatedImage",
    "UnsupportedFormat",
    "Verdict",
    "decode_image",
    "fit_combiner",
    "load_engine",
    "to_model_input",
]
