//! The bodies of wgrelay's fuzz targets (`fuzz_targets/*.rs` only call `run`), kept in a
//! library so that `cargo test` in this crate replays the committed seeds through exactly what
//! the fuzzer runs, on the stable toolchain. docs/fuzzing.md says what each target asserts.
//!
//! Every target is deterministic: no clock, no OS randomness (entropy is `TestEntropy`, time is
//! a fixed `Instant` advanced by the input), so a crash file reproduces.

pub mod awg;
pub mod common;
pub mod config;
pub mod route;
pub mod state_file;
pub mod wire;

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every committed seed of `target`, and every input that once broke it
    /// (`regressions/<target>/`, minimised crash inputs), through its `run`.
    fn replay(target: &str, run: fn(&[u8])) {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut n = 0;
        for dir in [
            root.join("seeds").join(target),
            root.join("regressions").join(target),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry.unwrap().path();
                let data = std::fs::read(&path).unwrap();
                eprintln!("{}", path.display());
                run(&data);
                n += 1;
            }
        }
        assert!(n > 0, "no seeds for {target}");
    }

    #[test]
    fn wire_seeds() {
        replay("wire", crate::wire::run);
    }

    #[test]
    fn awg_seeds() {
        replay("awg", crate::awg::run);
    }

    #[test]
    fn route_seeds() {
        replay("route", crate::route::run);
    }

    /// The routing seeds get somewhere: nearly all of them confirm sessions, and so does at
    /// least one seed of every topology and cookie mode. (A few orders legitimately confirm
    /// nothing, e.g. an unproven newcomer spends its credit on a hand-over it cannot answer.)
    #[test]
    fn route_seeds_confirm_sessions() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds/route");
        let (mut total, mut confirming) = (0, 0);
        let mut kinds = std::collections::BTreeMap::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            let c = crate::route::run_counted(&std::fs::read(&path).unwrap());
            eprintln!("{name}: {c}");
            total += 1;
            let ok = c.sessions_confirmed > 0;
            confirming += usize::from(ok);
            *kinds
                .entry(name.trim_end_matches("_awg").to_string())
                .or_insert(false) |= ok;
        }
        assert!(
            confirming * 10 >= total * 9,
            "{confirming} of {total} seeds confirm a session"
        );
        for (kind, ok) in kinds {
            assert!(ok, "no {kind} seed confirms a session");
        }
    }

    #[test]
    fn state_file_seeds() {
        replay("state_file", crate::state_file::run);
    }

    #[test]
    fn config_seeds() {
        replay("config", crate::config::run);
    }
}
