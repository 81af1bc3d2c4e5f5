"""Analyses over the event table: LazyFrame in, LazyFrame (or incidents) out.

Nothing in here imports textual, the collectors or the lab: analysis only reads evidence.
"""
