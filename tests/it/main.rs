//! kmx's integration tests: one binary, real `kmx` runs on real kernel trees and real cross
//! compilers. Trees come from `KMX_TEST_HOME` (set by `./dev test`, which fetches them).
//! Under CI (`CI=true`) a missing tree or toolchain FAILS the test; elsewhere the test says
//! SKIPPED on stderr and returns.

mod support;

mod build;
mod cache;
mod differential;
mod docs;
mod doctor;
mod faults;
mod kernels;
mod lifecycle;
mod machine;
mod package;
mod reproducible;
mod schemas;
mod smoke;
mod verify;
