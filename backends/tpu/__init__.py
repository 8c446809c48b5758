"""hal backend plugin (under construction)."""
