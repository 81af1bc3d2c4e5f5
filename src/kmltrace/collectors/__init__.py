"""Live collectors: drive tracefs (and perf) on this machine and write capture bundles.

``tracefs`` owns the instance and restores what it touched, ``stream`` copies raw ring-buffer
pages to disk while the capture runs, ``metadata`` and ``processes`` record what analysis and
symbolisation need, ``perf`` runs perf record alongside, ``bundle_writer`` writes the bundle
atomically. The ``collect`` verb (kmltrace.verbs.collect) puts them together.
"""
