"""The ground every room stands on: the config schema, records and files, the run directory, the machine."""
