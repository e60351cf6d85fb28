"""The job use case: ``lifecycle`` (claim, lease, finish) runs ``phases`` (teacher → distill → evaluate → index),
which call the pure ML ``steps`` and record their results through ``context``."""
