"""The rounds: a session that trains, generates, scores and decides; its store, records, ranking and policy."""
