"""The four tier streams the cloud twin splits its input into, by record contract, and where each keeps its cell."""

SUMMARIES, EDGE_STATES, DECISIONS, OUTCOMES = "summaries", "edge_states", "decisions", "outcomes"
STREAMS = {"LocalSummary": SUMMARIES, "EdgeState": EDGE_STATES, "Decision": DECISIONS, "Outcome": OUTCOMES}
CELL_FIELDS = {SUMMARIES: "serving_cell", EDGE_STATES: "cell_id", DECISIONS: "cell_id", OUTCOMES: "cell_id"}
