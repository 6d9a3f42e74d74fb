"""Operator views of herd's records: the audit chain and the trace readers
(`herd audit`, `herd audit verify`, `herd traces`, `herd traces stats`)."""
