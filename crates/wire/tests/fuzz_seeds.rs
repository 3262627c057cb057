//! Every committed fuzz seed (fuzz/seeds/<target>/), and every crash input kept beside it, through its
//! target's checks: the coverage-guided runs are time-boxed, this replay is exhaustive and runs with the unit
//! tests.

use std::fs;
use std::path::{Path, PathBuf};

use mqtt_video_wire::fuzz_checks::TARGETS;

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz")
}

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_file()).collect();
    files.sort();
    files
}

#[test]
fn every_fuzz_target_has_its_checks_here_and_seeds() {
    let mut targets: Vec<String> = files(&fuzz_dir().join("fuzz_targets"))
        .iter()
        .filter_map(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .collect();
    targets.sort();
    let mut here: Vec<String> = TARGETS.iter().map(|(name, _)| name.to_string()).collect();
    here.sort();
    assert_eq!(targets, here, "fuzz/fuzz_targets and fuzz_checks::TARGETS name the same targets");
    for (name, _) in TARGETS {
        assert!(!files(&fuzz_dir().join("seeds").join(name)).is_empty(), "fuzz/seeds/{name} has seeds");
    }
}

#[test]
fn every_seed_and_kept_crash_passes_its_targets_checks() {
    let mut replayed = 0;
    for (name, check) in TARGETS {
        for folder in ["seeds", "artifacts"] {
            // libFuzzer's artifacts also hold slow units and timeouts, which are no failure of the checks.
            let kept = |p: &PathBuf| {
                folder == "seeds" || p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("crash-"))
            };
            for file in files(&fuzz_dir().join(folder).join(name)).into_iter().filter(kept) {
                let bytes = fs::read(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
                let outcome = std::panic::catch_unwind(|| check(&bytes));
                assert!(outcome.is_ok(), "{name}: {} fails its checks", file.display());
                replayed += 1;
            }
        }
    }
    assert!(replayed >= TARGETS.len(), "replayed {replayed} inputs");
}
