//! Scheduler library.
