"""Declarative search spaces shipped with condconv-nas (one YAML file per base architecture)."""
