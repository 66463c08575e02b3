"""aldar's orchestration: the LLM loop, the rule policy, the REPL/CLI and the run store."""
