"""The services around the runtime: `triage watch` (a folder watcher), `triage listen` (a DICOM storage
SCP), their durable SQLite job store, PACS forwarding, on-positive actions, metrics and JSON logs.

Depends on ``triage`` (the runtime) and the ``serving`` extra (watchdog, pynetdicom, prometheus-client).
Its commands (:mod:`serving.cli`) reach ``triage`` through the ``triage.commands`` entry-point group;
``triage`` never imports this package. See docs/deploy.md.
"""
