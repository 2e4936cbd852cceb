"""Pure, fast tests: no process, broker or database; each checks one module's rules in-process."""
