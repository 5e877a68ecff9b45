//! The one GNU make jobserver every make of a run shares: the caller's when kmx runs under
//! `make -jN` (a distro build, a Yocto recipe, a CI Makefile), else kmx's own with `jobs`
//! slots. So kmx inside `make -j2` never runs more than two compiles, as cargo does.
//!
//! A cell takes one slot for its make's implicit job; make takes more for parallel compiles.
//! Under an inherited jobserver kmx itself holds one implicit slot from its parent, so the
//! first cell runs on it without taking a token from the pipe.

use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

static INHERITED: OnceLock<Option<jobserver::Client>> = OnceLock::new();

/// Take the caller's jobserver from `MAKEFLAGS` (or `CARGO_MAKEFLAGS`, `MFLAGS`) if there is
/// a working one. Call it first thing in `main`, before any file is opened, so that the
/// descriptors it names are still the caller's.
pub fn capture_from_env() {
    INHERITED.get_or_init(|| {
        // SAFETY: called at the start of main, before kmx opens any descriptor, so the ones
        // MAKEFLAGS names are the ones make passed; `check_pipe` verifies they are a pipe.
        let found = unsafe { jobserver::Client::from_env_ext(true) };
        found.client.ok()
    });
}

pub struct Jobserver {
    client: jobserver::Client,
    inherited: bool,
    /// kmx's own implicit slot under an inherited jobserver, while no cell uses it.
    implicit_free: AtomicBool,
}

/// A slot held by a running make; freed when dropped.
pub enum Slot<'a> {
    Implicit(&'a AtomicBool),
    Token(#[allow(dead_code)] jobserver::Acquired),
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Slot::Implicit(free) = self {
            free.store(true, Ordering::Release);
        }
    }
}

impl Jobserver {
    /// The caller's jobserver if kmx has one (see [`capture_from_env`]), else a new one with
    /// `jobs` slots.
    pub fn for_run(jobs: usize) -> Result<Jobserver> {
        if let Some(Some(client)) = INHERITED.get() {
            return Ok(Jobserver {
                client: client.clone(),
                inherited: true,
                implicit_free: AtomicBool::new(true),
            });
        }
        let client = jobserver::Client::new(jobs.max(1))
            .map_err(|e| Error::env(format!("cannot create the make jobserver: {e}")))?;
        Ok(Jobserver {
            client,
            inherited: false,
            implicit_free: AtomicBool::new(false),
        })
    }

    /// Whether the caller's make jobserver is in use, without creating anything.
    pub fn inherited() -> bool {
        matches!(INHERITED.get(), Some(Some(_)))
    }

    /// Wait for a slot for one make.
    pub fn acquire(&self) -> std::io::Result<Slot<'_>> {
        if self
            .implicit_free
            .compare_exchange(true, false, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            return Ok(Slot::Implicit(&self.implicit_free));
        }
        self.client.acquire().map(Slot::Token)
    }

    /// Give a make command the jobserver (its flags in `MAKEFLAGS`, the descriptors).
    pub fn configure_make(&self, cmd: &mut Command) {
        self.client.configure_make(cmd);
    }

    pub fn is_inherited(&self) -> bool {
        self.inherited
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_implicit_slot_is_used_once_at_a_time() {
        let js = Jobserver {
            client: jobserver::Client::new(1).unwrap(),
            inherited: true,
            implicit_free: AtomicBool::new(true),
        };
        let a = js.acquire().unwrap();
        assert!(matches!(a, Slot::Implicit(_)));
        let b = js.acquire().unwrap();
        assert!(matches!(b, Slot::Token(_)));
        drop(a);
        assert!(matches!(js.acquire().unwrap(), Slot::Implicit(_)));
    }

    #[test]
    fn an_own_jobserver_has_no_implicit_slot() {
        let js = Jobserver {
            client: jobserver::Client::new(2).unwrap(),
            inherited: false,
            implicit_free: AtomicBool::new(false),
        };
        let slots = [js.acquire().unwrap(), js.acquire().unwrap()];
        assert!(slots.iter().all(|s| matches!(s, Slot::Token(_))));
        assert!(!js.is_inherited());
    }
}
