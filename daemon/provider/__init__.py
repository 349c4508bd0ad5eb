"""The provider's side of the daemon: its management API client, webhook verification and
parsing, Standard Webhooks signing, the firewall allowlist rendered from its IP lists, and
`sandbox`, an emulator of the provider for tests and the demo. See docs/provider.md."""
