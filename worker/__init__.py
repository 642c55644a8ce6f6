"""The analysis: ``worker.engine`` turns images into verdicts (serving only); ``worker.research`` holds the offline
tools that make and measure its detectors. Nothing here knows of the web service or its database."""
