"""What the user sees: the terminal UI, tables, the REPL, the report and its chart."""
