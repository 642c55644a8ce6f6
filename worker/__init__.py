"""The worker side of the scanner: ``worker.engine`` turns images into verdicts; ``worker.calibrate`` fits the
detector combiner and its thresholds for a pair of model bundles."""
