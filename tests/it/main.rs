//! kmx's integration tests: one binary, real `kmx` runs on real kernel trees and real cross
//! compilers. Trees come from `KMX_TEST_HOME` (set by `./dev test`, which fetches them).
//! Under `./dev test` (`KMX_TEST_HOME` set) or CI (`CI=true`) a missing prerequisite (trees,
//! kernel images, root) FAILS the test; elsewhere, as in a plain `cargo test`, the test says
//! `SKIPPED <test>: <why>` on stderr (uncaptured, so cargo test shows it) and returns
//! (`support::skip_or_fail`).

mod support;

mod build;
mod cache;
mod compat;
mod differential;
mod docs;
mod doctor;
mod faults;
mod fidelity;
mod hostile;
mod kernels;
mod lifecycle;
mod machine;
mod newuser;
mod package;
mod readme;
mod reproducible;
mod sandbox;
mod schemas;
mod smoke;
mod trixie;
mod verify;
