"""quantfw-example: a template plugin (a target spec and a finalize-stage algorithm)."""
