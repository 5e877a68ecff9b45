//! Taking files out of a cell's build directory. The package's code (PRE_BUILD, make,
//! POST_BUILD) wrote that directory and kmx reads it on the host, outside the sandbox, as
//! whoever runs kmx (often root): a `.ko` or `Module.symvers` there may be a symbolic link
//! to a host file, a directory on the way may be a link out of the tree, a file may be a
//! FIFO that blocks whoever opens it. So a file is opened one component at a time with
//! `openat` under the build directory, never following a link (`O_NOFOLLOW` on every
//! component), checked to be a regular file before it is opened and again, by inode, once
//! it is, and copied into kmx's own directory. Every later step (strip, the checks, the
//! cache, tarballs, packages) works on that copy, never on the build directory.
//!
//! libc's `openat` and `fstatat` (libc is already a dependency, and `process.rs` calls it
//! the same way) rather than a new crate: two calls, each wrapped once here.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path};

use crate::error::{Error, Result};

/// Open `rel` under `dir` without following any symbolic link, as a regular file inside
/// `dir`. `Ok(None)` when it does not exist. An error names what is there instead (a link
/// and its target, a FIFO, a directory) and says the build put it there.
pub fn open_in(dir: &Path, rel: &Path) -> Result<Option<File>> {
    let refuse = |at: &Path, what: String| {
        Error::failed(format!(
            "{} in the build directory is {what}; kmx takes only regular files from a build",
            at.display()
        ))
        .hint("the package's build (make, PRE_BUILD or POST_BUILD) put it there: a module and Module.symvers must be files the build wrote")
    };
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(p) => parts.push(p),
            Component::CurDir => {}
            _ => return Err(refuse(rel, "outside the build directory".into())),
        }
    }
    let Some((last, dirs)) = parts.split_last() else {
        return Err(refuse(rel, "not a file name".into()));
    };
    let mut cur =
        open_at(None, dir, libc::O_DIRECTORY).map_err(|e| Error::io("open directory", dir, e))?;
    let mut walked = std::path::PathBuf::new();
    for d in dirs {
        walked.push(d);
        match lstat_at(&cur, Path::new(d)) {
            Ok(Some(m)) if m.st_mode & libc::S_IFMT == libc::S_IFDIR => {}
            Ok(Some(m)) => return Err(refuse(&walked, describe(dir, &walked, m.st_mode))),
            Ok(None) => return Ok(None),
            Err(e) => return Err(Error::io("look at", dir.join(&walked), e)),
        }
        cur = match open_at(Some(&cur), Path::new(d), libc::O_DIRECTORY) {
            Ok(f) => f,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(None),
            Err(e) => {
                return Err(refuse(
                    &walked,
                    format!("not a directory kmx can open ({e})"),
                ));
            }
        };
    }
    walked.push(last);
    let before = match lstat_at(&cur, Path::new(last)) {
        Ok(Some(m)) if m.st_mode & libc::S_IFMT == libc::S_IFREG => m,
        Ok(Some(m)) => return Err(refuse(&walked, describe(dir, &walked, m.st_mode))),
        Ok(None) => return Ok(None),
        Err(e) => return Err(Error::io("look at", dir.join(&walked), e)),
    };
    let file = open_at(Some(&cur), Path::new(last), libc::O_NONBLOCK)
        .map_err(|e| refuse(&walked, format!("not a file kmx can open ({e})")))?;
    let after = file
        .metadata()
        .map_err(|e| Error::io("look at", dir.join(&walked), e))?;
    if !after.is_file() || after.ino() != before.st_ino || after.dev() != before.st_dev {
        return Err(refuse(
            &walked,
            "a file that was replaced while kmx opened it".into(),
        ));
    }
    Ok(Some(file))
}

/// Copy `rel` under `dir` ([`open_in`]) to `dest`, kmx's own file. `Ok(false)` when there
/// is no such file.
pub fn copy_out(dir: &Path, rel: &Path, dest: &Path) -> Result<bool> {
    let Some(mut from) = open_in(dir, rel)? else {
        return Ok(false);
    };
    let mut to = File::create(dest).map_err(|e| Error::io("create", dest, e))?;
    io::copy(&mut from, &mut to).map_err(|e| Error::io("copy", dir.join(rel), e))?;
    Ok(true)
}

/// What is at `rel` under `dir` instead of a regular file, for a message: a symbolic link
/// names its target (read, never followed).
fn describe(dir: &Path, rel: &Path, mode: libc::mode_t) -> String {
    match mode & libc::S_IFMT {
        libc::S_IFLNK => match std::fs::read_link(dir.join(rel)) {
            Ok(to) => format!("a symbolic link to {}", to.display()),
            Err(_) => "a symbolic link".into(),
        },
        libc::S_IFDIR => "a directory".into(),
        libc::S_IFIFO => "a named pipe (FIFO)".into(),
        libc::S_IFSOCK => "a socket".into(),
        libc::S_IFCHR | libc::S_IFBLK => "a device file".into(),
        _ => "not a regular file".into(),
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// `openat(at or AT_FDCWD, path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | flags)`.
fn open_at(at: Option<&File>, path: &Path, flags: libc::c_int) -> io::Result<File> {
    let c = c_path(path)?;
    let base = at.map_or(libc::AT_FDCWD, AsRawFd::as_raw_fd);
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | flags;
    // SAFETY: `c` is a NUL-terminated string that outlives the call; `base` is AT_FDCWD or
    // a descriptor `at` keeps open.
    let fd = unsafe { libc::openat(base, c.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// `fstatat(at, name, AT_SYMLINK_NOFOLLOW)`; `Ok(None)` when there is nothing there.
fn lstat_at(at: &File, name: &Path) -> io::Result<Option<libc::stat>> {
    let c = c_path(name)?;
    // SAFETY: a zeroed `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is NUL-terminated, `at` is open and `st` is a valid place to write.
    let rc = unsafe {
        libc::fstatat(
            at.as_raw_fd(),
            c.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        return Ok(Some(st));
    }
    let e = io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::ENOENT) => Ok(None),
        _ => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    fn message(r: Result<Option<File>>) -> String {
        crate::error::render_inline(&r.expect_err("must be refused"))
    }

    #[test]
    fn regular_files_inside_are_read_and_nothing_else_is() {
        let d = tempfile::tempdir().unwrap();
        let build = d.path().join("build");
        let outside = d.path().join("victim.ko");
        std::fs::create_dir_all(build.join("sub")).unwrap();
        std::fs::write(&outside, b"host").unwrap();
        std::fs::write(build.join("sub/m.ko"), b"mine").unwrap();
        let dest = d.path().join("copy.ko");
        assert!(copy_out(&build, Path::new("sub/m.ko"), &dest).unwrap());
        assert_eq!(std::fs::read(&dest).unwrap(), b"mine");
        assert!(!copy_out(&build, Path::new("none.ko"), &dest).unwrap());
        assert!(!copy_out(&build, Path::new("nodir/m.ko"), &dest).unwrap());

        symlink(&outside, build.join("link.ko")).unwrap();
        let m = message(open_in(&build, Path::new("link.ko")));
        assert!(
            m.contains(&format!(
                "link.ko in the build directory is a symbolic link to {}",
                outside.display()
            )),
            "{m}"
        );
        // A directory on the way that leads out of the tree.
        symlink(d.path(), build.join("up")).unwrap();
        let m = message(open_in(&build, Path::new("up/victim.ko")));
        assert!(
            m.contains("up in the build directory is a symbolic link to"),
            "{m}"
        );
        let m = message(open_in(&build, Path::new("../victim.ko")));
        assert!(m.contains("outside the build directory"), "{m}");
        let m = message(open_in(&build, Path::new("sub")));
        assert!(m.contains("is a directory"), "{m}");
        let fifo = c_path(&build.join("pipe.ko")).unwrap();
        // SAFETY: a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
        let m = message(open_in(&build, Path::new("pipe.ko")));
        assert!(m.contains("is a named pipe (FIFO)"), "{m}");
        assert_eq!(std::fs::read(&outside).unwrap(), b"host");
    }
}
