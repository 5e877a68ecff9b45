//! A cell's inputs: everything that decides its output ([`provenance::Inputs`]: source,
//! tree, compiler, the make line and variables the cell runner will use, its dependencies'
//! fingerprints), gathered once the plan is drawn, and the fingerprint over them
//! ([`crate::matrix::fingerprint`] says what goes in). Above the plan and the cell runner,
//! whose make line it hashes; below the pipeline, whose `plan` calls it.

use crate::matrix::cell::{make_line, make_vars, trees_dir};
use crate::matrix::plan::{Cell, Digests};
use crate::matrix::provenance;

/// Give every cell its fingerprint: source contents and tree identities are hashed once
/// each, dependencies before their dependents. Paths of the work and source directories are
/// replaced by placeholders, so the same cell in another output directory is the same cell.
pub fn fingerprint(cells: &mut [Cell], digests: &Digests) {
    let (sources, trees) = (&digests.sources, &digests.trees);
    let environment = provenance::environment();
    let mut done: Vec<Option<String>> = vec![None; cells.len()];
    // Dependencies form a DAG (checked by the plan): repeat until every cell is done.
    while done.iter().any(Option::is_none) {
        for i in 0..cells.len() {
            if done[i].is_some() || cells[i].deps.iter().any(|&d| done[d].is_none()) {
                continue;
            }
            let c = &cells[i];
            // Where the cell's directories, its source and its tree are on this machine is
            // not an input: the same cell elsewhere is the same cell.
            let trees_dir = trees_dir(&c.tree);
            let trees_dir = trees_dir.to_string_lossy();
            let normalize = |text: String| {
                text.replace(&c.work_dir.to_string_lossy().into_owned(), "<work>")
                    .replace(&c.source.to_string_lossy().into_owned(), "<source>")
                    .replace(&c.tree.kdir.to_string_lossy().into_owned(), "<kdir>")
                    .replace(&format!("{trees_dir}="), "<kdir>/..=")
            };
            let mut spec = c.spec.clone();
            spec.log.clear();
            spec.warnings.clear();
            let vars = make_vars(c, std::slice::from_ref(&c.compiler().name));
            let inputs = provenance::Inputs {
                source: provenance::SourceInput {
                    dir: c.source.clone(),
                    sha256: sources[&c.source].clone(),
                },
                kernel: provenance::KernelInput {
                    release: c.tree.release.clone(),
                    vermagic: c.tree.vermagic.to_string(),
                    kdir: c.tree.kdir.clone(),
                    identity: trees[&c.tree.kdir].clone(),
                },
                toolchain: c.target.toolchain.identity.to_string(),
                compiler: provenance::CompilerInput {
                    path: c.compiler().path.clone(),
                    version: c.compiler().version_line.clone(),
                },
                make: normalize(make_line(c)),
                vars: vars.into_iter().map(|(k, v)| (k, normalize(v))).collect(),
                environment: environment.clone(),
                manifest_sha256: provenance::manifest_digest(&normalize(format!("{spec:?}"))),
                namespace: c.view.is_some(),
                dependencies: c
                    .deps
                    .iter()
                    .map(|&d| provenance::Dependency {
                        module: cells[d].spec.name.clone(),
                        fingerprint: done[d].clone().unwrap_or_default(),
                    })
                    .collect(),
            };
            done[i] = Some(inputs.fingerprint());
            cells[i].inputs = Some(inputs);
        }
    }
    for (c, fp) in cells.iter_mut().zip(done) {
        c.fingerprint = fp.unwrap_or_default();
    }
}
