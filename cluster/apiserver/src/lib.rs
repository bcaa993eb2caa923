//! Kelson API server.
