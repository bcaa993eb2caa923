//! Kelson controller manager.
