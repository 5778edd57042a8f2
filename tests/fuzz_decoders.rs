//! The `cargo fuzz` targets of `fuzz/` (one per decoder of bytes from disk
//! or a peer, in `fuzz/src/lib.rs`), run under proptest so CI runs them on
//! stable: every file of the committed corpus as it is, then mutations of
//! corpus files (bit flips, truncations, insertions, overwrites, splices)
//! and random bytes. A panic in a decoder, or a broken round trip, fails
//! the test. `FUZZ_CASES` sets the number of generated inputs per target
//! (default 2000); `cargo +nightly fuzz run` does the real fuzzing (see
//! fuzz/README.md).

use std::path::{Path, PathBuf};

#[path = "../fuzz/src/lib.rs"]
mod fuzzing;

use fuzzing::{regressions, seeds, TARGETS};
use proptest::prelude::*;
use proptest::sample::Index;

fn cases() -> u32 {
    std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000)
}

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

/// The committed corpus of `target`: (file name, bytes), by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|e| {
            let e = e.unwrap();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no corpus for {target}");
    files
}

fn target(name: &str) -> fn(&[u8]) -> bool {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name}"))
        .1
}

#[derive(Clone, Debug)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, Vec<u8>),
    Overwrite(Index, Vec<u8>),
    /// Bytes of another corpus file put in at a position.
    Splice(Index, Index, Index, Index),
    /// A byte set to a boundary value (0, 1, 0x7f, 0x80, 0xff).
    Boundary(Index, Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let bytes = || prop::collection::vec(any::<u8>(), 1..16);
    prop_oneof![
        4 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::Flip(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        2 => (any::<Index>(), bytes()).prop_map(|(i, v)| Mutation::Insert(i, v)),
        2 => (any::<Index>(), bytes()).prop_map(|(i, v)| Mutation::Overwrite(i, v)),
        1 => (any::<Index>(), any::<Index>(), any::<Index>(), any::<Index>())
            .prop_map(|(a, b, c, d)| Mutation::Splice(a, b, c, d)),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(i, v)| Mutation::Boundary(i, v)),
    ]
}

fn apply(mut data: Vec<u8>, corpus: &[(String, Vec<u8>)], muts: &[Mutation]) -> Vec<u8> {
    for m in muts {
        let at = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match m {
            Mutation::Flip(i, bit) if !data.is_empty() => {
                let p = at(i, data.len());
                data[p] ^= 1 << bit;
            }
            Mutation::Truncate(i) => {
                let p = at(i, data.len() + 1);
                data.truncate(p);
            }
            Mutation::Insert(i, v) => {
                let p = at(i, data.len() + 1);
                data.splice(p..p, v.iter().copied());
            }
            Mutation::Overwrite(i, v) if !data.is_empty() => {
                let p = at(i, data.len());
                for (k, b) in v.iter().enumerate() {
                    if let Some(x) = data.get_mut(p + k) {
                        *x = *b;
                    }
                }
            }
            Mutation::Splice(i, other, from, len) => {
                let src = &corpus[other.index(corpus.len())].1;
                let start = at(from, src.len());
                let n = at(len, src.len() - start + 1).min(4096);
                let p = at(i, data.len() + 1);
                data.splice(p..p, src[start..start + n].iter().copied());
            }
            Mutation::Boundary(i, v) if !data.is_empty() => {
                let p = at(i, data.len());
                data[p] = [0, 1, 0x7f, 0x80, 0xff][v.index(5)];
            }
            _ => {}
        }
    }
    data
}

#[derive(Clone, Debug)]
enum Input {
    Mutated(Index, Vec<Mutation>),
    Random(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        5 => (any::<Index>(), prop::collection::vec(mutation(), 1..5))
            .prop_map(|(i, m)| Input::Mutated(i, m)),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(Input::Random),
    ]
}

/// Every corpus file as it is (the seeds must still be accepted), then
/// `FUZZ_CASES` generated inputs.
fn run(name: &str) {
    let f = target(name);
    let files = corpus(name);
    let seed_names: Vec<String> = seeds()
        .into_iter()
        .filter(|(t, _, _)| *t == name)
        .map(|(_, n, _)| n)
        .collect();
    for (file, bytes) in &files {
        let accepted = f(bytes);
        if seed_names.contains(file) {
            assert!(accepted, "{name}: seed {file} is no longer accepted");
        }
    }
    let config = ProptestConfig {
        cases: cases(),
        // Inputs that fail shrink to a small one; a decoder that panics
        // prints it (proptest also keeps it in a regressions file).
        max_shrink_iters: 2000,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let result = runner.run(&input(), |inp| {
        let data = match &inp {
            Input::Mutated(i, muts) => apply(files[i.index(files.len())].1.clone(), &files, muts),
            Input::Random(v) => v.clone(),
        };
        let _ = f(&data);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{name}: {e}");
    }
}

#[test]
fn manifest() {
    run("manifest");
}

#[test]
fn tree_node() {
    run("tree_node");
}

#[test]
fn chunk_frame() {
    run("chunk_frame");
}

#[test]
fn outboard() {
    run("outboard");
}

#[test]
fn sync_message() {
    run("sync_message");
}

#[test]
fn mount_records() {
    run("mount_records");
}

#[test]
fn state_files() {
    run("state_files");
}

#[test]
fn key_material() {
    run("key_material");
}

/// Every target has a corpus, and every corpus a target.
#[test]
fn every_target_has_a_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut dirs: Vec<String> = std::fs::read_dir(root.join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    dirs.sort();
    let mut names: Vec<String> = TARGETS.iter().map(|(n, _)| n.to_string()).collect();
    names.sort();
    assert_eq!(dirs, names);
    for n in &names {
        assert!(root.join("fuzz_targets").join(format!("{n}.rs")).exists());
    }
}

/// Writes the seeds and regressions (`fuzzing::seeds`,
/// `regressions`) into `fuzz/corpus/`:
/// `cargo test --test fuzz_decoders -- --ignored write_seed_corpus`.
#[test]
#[ignore]
fn write_seed_corpus() {
    for (t, name, bytes) in seeds().into_iter().chain(regressions()) {
        let dir = corpus_dir(t);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}
