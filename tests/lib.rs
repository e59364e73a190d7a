//! Test support crate (the tests live in integration/).
