"""The running process's parts: the engine that turns inputs into durable events, the
projections kept from the log, the timer driver, the outbox and its effects, the pollers, and
the audit views over the log. They import the domain and the event store, never the HTTP
listener or the command line; `daemon.service` assembles them into one process."""
