"""Default declarative mappings, one TOML file per (connector type, entity)."""
