"""hal conformance suite (imported as hal_conformance)."""
