"""The daemon's HTTP listener: `server` (the app, probes, status page), `ingest` (webhooks and
auth events), `operator` (the operator API) and `errors` (one JSON error shape for all)."""
