"""The `recdistill` command line: the only composition root, free to import core, api and worker."""
