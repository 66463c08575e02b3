"""The LLM side: the client and its transport, the chat loop, tool specs, the tools, the decider, prompts, the story writer."""
