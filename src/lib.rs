//! The root package: the `otp` command, and [`stack`], the whole pipeline wired in one
//! process (workers, simulator) with the same code as the binaries, for the end-to-end tests
//! and the demo. [`load`] measures the pipeline with the workers as separate processes;
//! [`report`] sums up the status topic for analysts.

pub mod demo;
pub mod follow;
pub mod keys;
pub mod load;
pub mod report;
pub mod stack;
