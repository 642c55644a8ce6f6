"""Offline detection research: attacks, deliveries, web-image sets, example making, scoring, calibration fitting,
detector training, evaluation and ensembling. Imports the engine to score images exactly as the service does;
nothing on the serving path imports this package."""
