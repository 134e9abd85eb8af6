"""Live pages: publishing what the worker stores (`publisher`), the socket (`consumers`,
`routing`)."""
