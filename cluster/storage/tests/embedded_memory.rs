//! The conformance suite on the in-memory embedded backend.

use kelson_storage::Embedded;

kelson_storage::storage_conformance_suite!(|| async { (Embedded::in_memory(), ()) });
