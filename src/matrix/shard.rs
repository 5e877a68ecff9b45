//! Sharding: split one plan into N deterministic shares for CI fan-out (`--shard I/N`).
//!
//! Every machine of a CI matrix computes the same full plan, so the split must depend on the
//! plan alone: cells are grouped with their dependencies (a cell and what it depends on must
//! build on the same machine, which needs the dependency's Module.symvers), groups are
//! weighed by a cost estimate and dealt out largest first to the least loaded shard
//! (longest-processing-time scheduling; ties broken by position). The estimate is the
//! duration recorded for the cell in a previous report given with `--costs`, else the size
//! of the module's source tree, which is the same on every machine. Each cell lands in
//! exactly one shard; `kmx report merge` checks that.

use std::collections::HashMap;

use crate::matrix::plan::{Action, Cell, Plan, Shard};
use crate::matrix::report::Report;

/// Cost estimates from a previous report: (module, version, target, kernel) -> seconds.
pub fn costs_from(report: &Report) -> HashMap<(String, String, String, String), f64> {
    report
        .cells
        .iter()
        .map(|c| {
            (
                (
                    c.module.clone(),
                    c.version.clone(),
                    c.target.clone(),
                    c.kernel.clone(),
                ),
                c.duration_secs,
            )
        })
        .collect()
}

fn source_bytes(cell: &Cell) -> f64 {
    fn walk(dir: &std::path::Path) -> u64 {
        std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| match e.file_type() {
                        Ok(t) if t.is_dir() => walk(&e.path()),
                        _ => e.metadata().map(|m| m.len()).unwrap_or(0),
                    })
                    .sum()
            })
            .unwrap_or(0)
    }
    walk(&cell.source) as f64
}

/// The shard (0-based) of every cell of `plan`.
pub fn assign(
    plan: &Plan,
    count: usize,
    costs: &HashMap<(String, String, String, String), f64>,
) -> Vec<usize> {
    let mut source_cost: HashMap<&std::path::Path, f64> = HashMap::new();
    let cost: Vec<f64> = plan
        .cells
        .iter()
        .map(|c| {
            let key = (
                c.spec.name.clone(),
                c.spec.version.clone(),
                c.target.target.name.clone(),
                c.tree.release.clone(),
            );
            match c.action {
                Action::Skip(_) => 0.0,
                Action::Build => match costs.get(&key) {
                    Some(&secs) => secs,
                    None => *source_cost
                        .entry(&c.source)
                        .or_insert_with(|| source_bytes(c) / 1e4),
                },
            }
        })
        .collect();
    let deps: Vec<&[usize]> = plan.cells.iter().map(|c| c.deps.as_slice()).collect();
    deal(&cost, &deps, count)
}

/// Deal cells out to `count` shards: each cell (`cost[i]`, depending on the cells `deps[i]`)
/// goes with everything it is linked to by dependencies, and the groups go largest first to
/// the least loaded shard (the lowest-numbered among equals; equal groups in the order of
/// their first cell). The shard (0-based) of every cell.
fn deal(cost: &[f64], deps: &[&[usize]], count: usize) -> Vec<usize> {
    let n = cost.len();
    // Union-find over dependency edges.
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut i: usize) -> usize {
        while p[i] != i {
            p[i] = p[p[i]];
            i = p[i];
        }
        i
    }
    for (i, ds) in deps.iter().enumerate() {
        for &d in ds.iter() {
            let (a, b) = (find(&mut parent, i), find(&mut parent, d));
            if a != b {
                parent[a.max(b)] = a.min(b);
            }
        }
    }
    let mut groups: Vec<(f64, usize, Vec<usize>)> = Vec::new(); // (cost, first index, members)
    let mut group_of: HashMap<usize, usize> = HashMap::new();
    for (i, &c) in cost.iter().enumerate() {
        let root = find(&mut parent, i);
        let g = *group_of.entry(root).or_insert_with(|| {
            groups.push((0.0, i, Vec::new()));
            groups.len() - 1
        });
        groups[g].0 += c;
        groups[g].2.push(i);
    }
    groups.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
    let mut load = vec![0.0f64; count.max(1)];
    let mut shard_of = vec![0usize; n];
    for (cost, _, members) in groups {
        let mut best = 0;
        for s in 1..load.len() {
            if load[s] < load[best] {
                best = s;
            }
        }
        load[best] += cost;
        for m in members {
            shard_of[m] = best;
        }
    }
    shard_of
}

/// The cells of `plan` that belong to `shard`, as a plan of their own.
pub fn select(
    plan: &Plan,
    shard: Shard,
    costs: &HashMap<(String, String, String, String), f64>,
) -> Plan {
    let keep: Vec<bool> = assign(plan, shard.count, costs)
        .iter()
        .map(|&s| s == shard.index - 1)
        .collect();
    let mut share = plan.subset(&keep);
    share.shard = Some(shard);
    share
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_largest_go_first_to_the_least_loaded_shard() {
        // 5 to shard 0, 4 to 1, 3 to 1 (4 < 5), 2 to 0 (5 < 7), 1 to 0 (7 = 7: the first).
        let cost = [3.0, 5.0, 1.0, 4.0, 2.0];
        let none: [&[usize]; 5] = [&[]; 5];
        assert_eq!(deal(&cost, &none, 2), [1, 0, 0, 1, 0]);
    }

    #[test]
    fn a_cell_goes_with_what_it_depends_on_and_what_depends_on_it() {
        // 0 <- 2 <- 4 (a chain) weighs 3 as one group; 1 and 3 weigh 2 each.
        let cost = [1.0, 2.0, 1.0, 2.0, 1.0];
        let deps: [&[usize]; 5] = [&[], &[], &[0], &[], &[2]];
        let got = deal(&cost, &deps, 2);
        assert_eq!(got[0], got[2]);
        assert_eq!(got[2], got[4]);
        assert_eq!(got, [0, 1, 0, 1, 0]);
        // Without the links the same costs split differently.
        let none: [&[usize]; 5] = [&[]; 5];
        assert_ne!(deal(&cost, &none, 2), got);
    }

    #[test]
    fn equal_costs_deal_in_plan_order_and_every_cell_lands_once() {
        let cost = [0.0; 7];
        let none: [&[usize]; 7] = [&[]; 7];
        // Skipped cells weigh nothing: no shard is less loaded than the first.
        assert_eq!(deal(&cost, &none, 3), [0, 0, 0, 0, 0, 0, 0]);
        let cost = [1.0; 7];
        let got = deal(&cost, &none, 3);
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        // One shard, or none asked: everything in shard 0.
        assert_eq!(deal(&cost, &none, 1), [0; 7]);
        assert_eq!(deal(&cost, &none, 0), [0; 7]);
        assert_eq!(deal(&[], &[], 4), Vec::<usize>::new());
    }
}
