//! `jax-csi demo`: the bucket engine end to end, printed step by step.
//! (Replaced by the two-node local demo once the node plugin exists.)

use std::path::Path;

use anyhow::{ensure, Context};
use jax_csi::bucket::{path, BucketId, BucketOptions, FileKind, StateDir};
use jax_csi::crypto::Kek;

pub fn run(state_dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let kek_path = state_dir.join("kek.hex");
    if !kek_path.exists() {
        Kek::generate()?.write_file(&kek_path)?;
    }
    let kek = Kek::from_file(&kek_path)?;
    let state = StateDir::open(&state_dir.join("node"))?;
    println!("== node identity {}", state.identity().node_id());

    let id = BucketId::generate()?;
    let bucket = state.create_bucket(id, &kek, &BucketOptions::default())?;
    println!("== created bucket {id} (secret stored only wrapped by the KEK)");

    let mut m = bucket.mount()?;
    let big: Vec<u8> = (0..3 * 1024 * 1024 + 123)
        .map(|i| (i % 251) as u8)
        .collect();
    path::write_file(&mut m, "/hello.txt", b"hello, encrypted world\n")?;
    path::write_file(
        &mut m,
        "/docs/readme.md",
        b"# notes\nchunked, signed, versioned\n",
    )?;
    path::write_file(&mut m, "/data/big.bin", &big)?;
    let v1 = m.save()?;
    println!("== saved version {} at height {}", v1.hash, v1.height);

    path::write_file(&mut m, "/hello.txt", b"hello again: version two\n")?;
    let (parent, name) = path::parent_of(&mut m, "/docs/readme.md")?;
    let docs = parent;
    m.rename(parent, name, docs, b"README.md", Default::default())?;
    let big_ino = path::resolve(&mut m, "/data/big.bin")?;
    m.write(big_ino, 1024 * 1024 + 10, b"PATCHED")?;
    let v2 = m.save()?;
    println!(
        "== saved version {} at height {} (one 4 KiB-class patch rewrote one chunk)",
        v2.hash, v2.height
    );

    println!("\n-- tree at head");
    for (p, kind) in path::walk(&mut m)? {
        let ino = path::resolve(&mut m, &p)?;
        let size = m.getattr(ino)?.size;
        let tag = if kind == FileKind::Dir {
            "dir "
        } else {
            "file"
        };
        println!("  {tag} {size:>9}  {p}");
    }
    let now = path::read_file(&mut m, "/hello.txt")?;
    println!(
        "\n-- /hello.txt now:      {}",
        String::from_utf8_lossy(&now).trim_end()
    );
    let mut old = bucket.open_version(&v1.hash)?;
    let then = path::read_file(&mut old, "/hello.txt")?;
    println!(
        "-- /hello.txt at v1:    {}",
        String::from_utf8_lossy(&then).trim_end()
    );
    let patched = path::read_file(&mut m, "/data/big.bin")?;
    ensure!(
        &patched[1024 * 1024 + 10..1024 * 1024 + 17] == b"PATCHED",
        "patch not read back"
    );

    println!("\n-- history (newest first)");
    for v in bucket.history()? {
        println!(
            "  height {:>2}  {}  {:>9} bytes  {} entries",
            v.height, v.hash, v.used_bytes, v.entries
        );
    }
    let restored = bucket.restore(&v1.hash)?;
    let mut m = bucket.mount()?;
    let back = path::read_file(&mut m, "/hello.txt")?;
    ensure!(back == then, "restore did not bring v1 back");
    println!(
        "\n== restored v1 as new head {} (height {})",
        restored.hash, restored.height
    );

    let report = bucket.verify()?;
    println!(
        "== verified {} versions, {} directories, {} chunks: every hash, tag and signature checks out",
        report.versions, report.directories, report.chunks
    );
    let blobs = state.store().list()?;
    let mut leaked = 0;
    for h in &blobs {
        let bytes = std::fs::read(state.store().path_of(h))?;
        if bytes.windows(5).any(|w| w == b"hello") {
            leaked += 1;
        }
    }
    ensure!(leaked == 0, "plaintext found in {leaked} blobs");
    println!(
        "== {} blobs on disk, none holds the plaintext \"hello\"",
        blobs.len()
    );
    println!(
        "\nTry: jax-csi bucket --state-dir {} --kek-file {} history {id}",
        state.root().display(),
        kek_path.display()
    );
    Ok(())
}
