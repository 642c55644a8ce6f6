"""Scheduled batch audits: a site crawled again and again on a schedule, each run compared with the one before.

Why a package of its own: an audit ties the crawler, the API's intake, the database and Celery beat together,
and none of those should know about audits.  ``schedule`` parses schedules, ``store`` holds every database
statement (the run lock and the DB-backed schedule), ``diff`` compares two runs, ``runner`` executes a run,
``webhooks`` signs and delivers the summary, ``tasks`` registers the Celery tasks and the beat entry, and
``cli`` is ``scanner audit``.
"""
