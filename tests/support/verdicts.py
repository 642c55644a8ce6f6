"""Verdicts as the engine writes them, for tests that seed the database without running the models."""

from __future__ import annotations


def verdict_with_score(model_version: str, calibration_version: str, label: str, score: float) -> dict:
    """A verdict as the engine writes it, flagged when ``score`` is above 1 (the threshold)."""
    return {
        "model_version": model_version,
        "calibration_version": calibration_version,
        "label": label,
        "label_index": 0,
        "confidence": 0.9,
        "top_k": [[label, 0.9]],
        "scores": {"kl_rs": score},
        "combined": score,
        "flagged": score > 1.0,
        "threshold": 1.0,
        "timings_ms": {"inference": 1.0},
    }
