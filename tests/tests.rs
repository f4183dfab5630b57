//! Integration tests, compiled into one binary. They run the real `automon` binary and real
//! Python workers in temporary directories.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod integration;
