//! Test harness for Kelson.
