"""The CLI's helpers: `broker doctor`, the interactive `broker client` terminal, and the small HTTP client they use."""
