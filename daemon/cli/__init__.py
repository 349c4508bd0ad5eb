"""The `staticipd` command line (`main`), its read-only log commands and the demo. Nothing
outside this package imports it: the process never depends on the command line."""
