"""Controller-side tooling of llm-fleet: runner wrapper, container lab, reports (console script ``llmfleet``)."""
