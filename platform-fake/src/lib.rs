//! Platform fake.
