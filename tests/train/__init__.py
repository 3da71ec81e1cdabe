"""Train stage tests (a package, so module names do not clash with other stages' tests)."""
