//! Link settings of the `kelson` binary.

fn main() {
    // Pack the executable's relative relocations (RELR): the loader reads a compact bitmap
    // instead of a table of megabytes at every start, which keeps small commands (`kelson
    // node-exporter`, `kelson logs`) small in memory. Debian 12's glibc (2.36) and binutils
    // (2.40) support it.
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
}
