//! What kmx says about itself: shell completions, man pages and `--help`, all generated from
//! the one command-line definition.

use std::process::Command;

use crate::support::*;

#[test]
fn completions_bash_is_accepted_by_bash_and_registers_kmx() {
    let k = Kmx::empty();
    let script = k.run(&["completions", "bash"]).ok().stdout();
    let file = k.dir().join("kmx.bash");
    std::fs::write(&file, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source '{}' && complete -p kmx", file.display()))
        .output()
        .unwrap();
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && shown.contains("-F _kmx") && shown.trim_end().ends_with(" kmx"),
        "{shown}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Subcommands and their flags are in it.
    for word in ["package", "completions", "--sandbox", "--format"] {
        assert!(script.contains(word), "{word} missing");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        assert!(!k.run(&["completions", shell]).ok().stdout().is_empty());
    }
    let bad = k.run(&["completions", "tcsh"]).expect(2);
    assert!(
        bad.stderr().contains("invalid value 'tcsh'"),
        "{}",
        bad.stderr()
    );
}

#[test]
fn man_pages_for_every_subcommand_render_without_warnings() {
    let k = Kmx::empty();
    let dir = k.dir().join("man");
    let run = k.run(&["man", "--out", dir.to_str().unwrap()]).ok();
    let written: Vec<String> = run
        .stdout()
        .lines()
        .map(|l| l.rsplit('/').next().unwrap().to_string())
        .collect();
    for page in [
        "kmx.1",
        "kmx-build.1",
        "kmx-package.1",
        "kmx-kernels-fetch.1",
        "kmx-keys-generate.1",
        "kmx-completions.1",
    ] {
        assert!(written.iter().any(|w| w == page), "{page}: {written:?}");
    }
    assert!(!written.iter().any(|w| w.starts_with("kmx-help")));
    // groff with every warning on: a page that does not parse says so on stderr.
    for page in &written {
        let out = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .arg(dir.join(page))
            .output()
            .unwrap();
        assert!(
            out.status.success() && out.stderr.is_empty(),
            "{page}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("man")
        .arg("-l")
        .arg(dir.join("kmx-build.1"))
        .env("MANWIDTH", "100")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "kmx-build",
        "SYNOPSIS",
        "--sandbox",
        "GLOBAL OPTIONS",
        "--home",
    ] {
        assert!(text.contains(want), "{want} missing:\n{text}");
    }
}

#[test]
fn help_puts_global_options_under_their_own_heading_and_env_filled_flags_stay_out_of_usage() {
    let k = Kmx::empty();
    let help = k.run(&["build", "--help"]).ok().stdout();
    let (own, global) = help
        .split_once("\nGlobal options:\n")
        .unwrap_or_else(|| panic!("no Global options heading:\n{help}"));
    for flag in ["--config-dir", "--home", "--state-dir", "--no-wait"] {
        assert!(global.contains(flag), "{flag} not global:\n{help}");
        assert!(!own.contains(flag), "{flag} among build's own:\n{help}");
    }
    assert!(own.contains("--target") && !global.contains("--target"));

    // A usage error with KMX_HOME, KMX_JOBS and KMX_STATE_DIR set: the usage line shows what
    // is required, not the flags the environment filled.
    let run = k
        .command(&["build"])
        .env("KMX_JOBS", "3")
        .env("KMX_STATE_DIR", k.dir())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(2), "{err}");
    assert!(err.contains("\nUsage: kmx build <SOURCE>...\n"), "{err}");
    // An error caused by the environment's value is still shown as it is.
    let run = k
        .command(&["build", "x"])
        .env("KMX_JOBS", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("invalid value '0' for '--jobs <JOBS>': must be at least 1"),
        "{err}"
    );
}
