"""The daemon's HTTP listener: `server` (the app, probes, status page), `ingest` (webhooks and
auth events), `operator` (the operator API), `errors` (one JSON error shape for all) and
`context` (what every route shares: the process's parts, storage trouble as a 503)."""
