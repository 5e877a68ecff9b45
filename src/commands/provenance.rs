//! `kmx provenance check`: rebuild cells from their provenance records and compare.

use std::path::{Path, PathBuf};

use crate::commands::Context;
use crate::commands::progress::Printer;
use crate::error::{Error, Kind, Result, exit};
use crate::matrix::reproduce::{self, Provenance, Verdict};

pub fn check(
    ctx: &Context,
    records: &[PathBuf],
    sources: &[PathBuf],
    keep: Option<&Path>,
) -> Result<i32> {
    let stop = crate::process::stop_flag()?;
    let mut code = exit::OK;
    for path in records {
        let record = Provenance::load(path)?;
        let label = format!(
            "{} {} {} {}",
            record.module, record.version, record.target, record.kernel
        );
        let tmp = tempfile::tempdir()
            .map_err(|e| Error::env(format!("cannot create a temporary directory: {e}")))?;
        let out = match keep {
            Some(dir) => dir.join(&record.fingerprint),
            None => tmp.path().to_path_buf(),
        };
        eprintln!("Rebuilding {label} from {}", path.display());
        let targets = reproduce::targets_of(&record, &ctx.profiles, &ctx.home)?;
        let verdict = reproduce::check(
            path,
            &record,
            sources,
            &targets,
            &out,
            &stop,
            &mut Printer::default(),
        )?;
        match verdict {
            Verdict::Same => {
                println!("{label}: reproduced");
                for o in &record.outputs {
                    println!("  {}  {}", o.sha256, o.file);
                }
            }
            Verdict::Differs(diffs) => {
                code = code.max(exit::FAILED);
                println!("{label}: NOT reproduced");
                for d in diffs {
                    let rebuilt = d.rebuilt.as_deref().unwrap_or("(not produced)");
                    println!("  {}: recorded {}, rebuilt {rebuilt}", d.file, d.recorded);
                    if !d.sections.is_empty() {
                        println!("    sections that differ: {}", d.sections.join(" "));
                    }
                    if let Some(why) = d.reason {
                        println!("    {why}");
                    }
                }
            }
            Verdict::NotBuilt(why) => {
                code = code.max(exit::FAILED);
                println!("{label}: NOT reproduced: the rebuild failed: {why}");
            }
            Verdict::InputsDiffer(fields) => {
                return Err(Error::new(
                    Kind::Usage,
                    format!(
                        "{label}: this machine's inputs are not the recorded ones (different: {})",
                        fields.join(", ")
                    ),
                )
                .at(path)
                .hint(
                    "rebuild with the recorded source (--source DIR), kernel tree and compiler",
                ));
            }
        }
    }
    Ok(code)
}
