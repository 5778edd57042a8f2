//! Reference-model property test: random operation sequences (including save,
//! reopen from disk and opening old versions) run against a `Mount` and a plain
//! in-memory model; every result and the whole tree are compared after each op.

use std::collections::BTreeMap;

use jax_csi::bucket::{
    path, BucketError, BucketId, BucketOptions, FileKind, Ino, Mount, RenameFlags, SetAttr,
    StateDir, XattrFlags, ROOT_INO,
};
use jax_csi::crypto::Kek;
use proptest::prelude::*;

const CHUNK: u32 = 4096;
const NAMES: [&str; 4] = ["a", "b", "c.txt", "d"];

#[derive(Clone, Debug, PartialEq)]
enum Node {
    File {
        data: Vec<u8>,
        mode: u32,
        xattrs: BTreeMap<String, Vec<u8>>,
    },
    Dir {
        children: BTreeMap<String, Node>,
        mode: u32,
    },
    Symlink(String),
}

fn empty_dir(mode: u32) -> Node {
    Node::Dir {
        children: BTreeMap::new(),
        mode,
    }
}

#[derive(Clone, Debug)]
enum Op {
    Create {
        dir: usize,
        name: usize,
    },
    Mkdir {
        dir: usize,
        name: usize,
    },
    Symlink {
        dir: usize,
        name: usize,
        target: usize,
    },
    Write {
        file: usize,
        offset: u32,
        len: u16,
        byte: u8,
    },
    Truncate {
        file: usize,
        size: u32,
    },
    Read {
        file: usize,
        offset: u32,
        len: u16,
    },
    Unlink {
        entry: usize,
    },
    Rmdir {
        entry: usize,
    },
    Rename {
        entry: usize,
        dir: usize,
        name: usize,
        no_replace: bool,
    },
    Chmod {
        entry: usize,
        mode: u16,
    },
    SetXattr {
        entry: usize,
        name: usize,
        value: u8,
    },
    Save,
    Reopen,
    OpenOld {
        version: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    let idx = 0usize..64;
    let name = 0usize..NAMES.len();
    prop_oneof![
        3 => (idx.clone(), name.clone()).prop_map(|(dir, name)| Op::Create { dir, name }),
        2 => (idx.clone(), name.clone()).prop_map(|(dir, name)| Op::Mkdir { dir, name }),
        1 => (idx.clone(), name.clone(), name.clone()).prop_map(|(dir, name, target)| Op::Symlink { dir, name, target }),
        4 => (idx.clone(), 0u32..(3 * CHUNK), 1u16..6000, any::<u8>())
            .prop_map(|(file, offset, len, byte)| Op::Write { file, offset, len, byte }),
        2 => (idx.clone(), 0u32..(3 * CHUNK)).prop_map(|(file, size)| Op::Truncate { file, size }),
        2 => (idx.clone(), 0u32..(3 * CHUNK), 1u16..9000).prop_map(|(file, offset, len)| Op::Read { file, offset, len }),
        2 => idx.clone().prop_map(|entry| Op::Unlink { entry }),
        1 => idx.clone().prop_map(|entry| Op::Rmdir { entry }),
        2 => (idx.clone(), idx.clone(), name.clone(), any::<bool>())
            .prop_map(|(entry, dir, name, no_replace)| Op::Rename { entry, dir, name, no_replace }),
        1 => (idx.clone(), 0u16..0o777).prop_map(|(entry, mode)| Op::Chmod { entry, mode }),
        1 => (idx.clone(), name.clone(), any::<u8>()).prop_map(|(entry, name, value)| Op::SetXattr { entry, name, value }),
        1 => Just(Op::Save),
        1 => Just(Op::Reopen),
        1 => (0usize..8).prop_map(|version| Op::OpenOld { version }),
    ]
}

/// Every path in the model (root = ""), sorted, with whether it is a dir / file.
fn model_paths(root: &Node) -> Vec<(String, &Node)> {
    fn go<'a>(prefix: &str, n: &'a Node, out: &mut Vec<(String, &'a Node)>) {
        if let Node::Dir { children, .. } = n {
            for (k, v) in children {
                let p = format!("{prefix}/{k}");
                out.push((p.clone(), v));
                go(&p, v, out);
            }
        }
    }
    let mut out = vec![(String::new(), root)];
    go("", root, &mut out);
    out
}

fn pick(root: &Node, i: usize, pred: impl Fn(&Node) -> bool, include_root: bool) -> Option<String> {
    let all: Vec<String> = model_paths(root)
        .into_iter()
        .filter(|(p, n)| (include_root || !p.is_empty()) && pred(n))
        .map(|(p, _)| p)
        .collect();
    (!all.is_empty()).then(|| all[i % all.len()].clone())
}

fn get_mut<'a>(root: &'a mut Node, path: &str) -> &'a mut Node {
    let mut cur = root;
    for c in path.split('/').filter(|c| !c.is_empty()) {
        cur = match cur {
            Node::Dir { children, .. } => children.get_mut(c).expect("model path exists"),
            _ => panic!("not a dir"),
        };
    }
    cur
}

fn split(path: &str) -> (String, String) {
    let i = path.rfind('/').expect("non-root path");
    (path[..i].to_string(), path[i + 1..].to_string())
}

fn children_mut<'a>(root: &'a mut Node, dir: &str) -> &'a mut BTreeMap<String, Node> {
    match get_mut(root, dir) {
        Node::Dir { children, .. } => children,
        _ => panic!("not a dir"),
    }
}

fn err_name(e: &BucketError) -> &'static str {
    match e {
        BucketError::NotFound => "NotFound",
        BucketError::Exists => "Exists",
        BucketError::NotADirectory => "NotADirectory",
        BucketError::IsADirectory => "IsADirectory",
        BucketError::NotEmpty => "NotEmpty",
        BucketError::InvalidArgument(_) => "InvalidArgument",
        BucketError::ReadOnly => "ReadOnly",
        other => panic!("unexpected error from the mount: {other}"),
    }
}

type Outcome = Result<Option<Vec<u8>>, &'static str>;

struct Harness {
    _dir: tempfile::TempDir,
    state: std::path::PathBuf,
    kek: Kek,
    id: BucketId,
    mount: Mount,
    model: Node,
    versions: Vec<(jax_csi::store::Hash, Node)>,
}

impl Harness {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let sd = StateDir::open(&state).unwrap();
        let kek = Kek::generate().unwrap();
        let id = BucketId::generate().unwrap();
        let opts = BucketOptions {
            chunk_size: CHUNK,
            ..Default::default()
        };
        let bucket = sd.create_bucket(id, &kek, &opts).unwrap();
        let mount = bucket.mount().unwrap();
        let model = empty_dir(0o755);
        let versions = vec![(bucket.head().unwrap(), model.clone())];
        Self {
            _dir: dir,
            state,
            kek,
            id,
            mount,
            model,
            versions,
        }
    }

    fn ino(&mut self, p: &str) -> Ino {
        path::resolve(&mut self.mount, p).unwrap()
    }

    fn apply(&mut self, op: &Op) {
        let (got, want): (Outcome, Outcome) = match op.clone() {
            Op::Create { dir, name } | Op::Mkdir { dir, name } => {
                let Some(d) = pick(&self.model, dir, |n| matches!(n, Node::Dir { .. }), true)
                else {
                    return;
                };
                let nm = NAMES[name];
                let parent = self.ino(&d);
                let is_dir = matches!(op, Op::Mkdir { .. });
                let got = if is_dir {
                    self.mount.mkdir(parent, nm.as_bytes(), 0o755, 0, 0)
                } else {
                    self.mount.create(parent, nm.as_bytes(), 0o644, 0, 0)
                };
                let children = children_mut(&mut self.model, &d);
                let want = if children.contains_key(nm) {
                    Err("Exists")
                } else {
                    let n = if is_dir {
                        empty_dir(0o755)
                    } else {
                        Node::File {
                            data: vec![],
                            mode: 0o644,
                            xattrs: BTreeMap::new(),
                        }
                    };
                    children.insert(nm.to_string(), n);
                    Ok(None)
                };
                (got.map(|_| None).map_err(|e| err_name(&e)), want)
            }
            Op::Symlink { dir, name, target } => {
                let Some(d) = pick(&self.model, dir, |n| matches!(n, Node::Dir { .. }), true)
                else {
                    return;
                };
                let nm = NAMES[name];
                let parent = self.ino(&d);
                let got = self
                    .mount
                    .symlink(parent, nm.as_bytes(), NAMES[target].as_bytes(), 0, 0);
                let children = children_mut(&mut self.model, &d);
                let want = if children.contains_key(nm) {
                    Err("Exists")
                } else {
                    children.insert(nm.to_string(), Node::Symlink(NAMES[target].to_string()));
                    Ok(None)
                };
                (got.map(|_| None).map_err(|e| err_name(&e)), want)
            }
            Op::Write {
                file,
                offset,
                len,
                byte,
            } => {
                let Some(f) = pick(&self.model, file, |n| matches!(n, Node::File { .. }), false)
                else {
                    return;
                };
                let ino = self.ino(&f);
                let buf = vec![byte; len as usize];
                let got = self.mount.write(ino, offset as u64, &buf);
                if let Node::File { data, .. } = get_mut(&mut self.model, &f) {
                    let end = offset as usize + buf.len();
                    if data.len() < end {
                        data.resize(end, 0);
                    }
                    data[offset as usize..end].copy_from_slice(&buf);
                }
                (got.map(|_| None).map_err(|e| err_name(&e)), Ok(None))
            }
            Op::Truncate { file, size } => {
                let Some(f) = pick(&self.model, file, |n| matches!(n, Node::File { .. }), false)
                else {
                    return;
                };
                let ino = self.ino(&f);
                let got = self.mount.setattr(
                    ino,
                    SetAttr {
                        size: Some(size as u64),
                        ..Default::default()
                    },
                );
                if let Node::File { data, .. } = get_mut(&mut self.model, &f) {
                    data.resize(size as usize, 0);
                }
                (got.map(|_| None).map_err(|e| err_name(&e)), Ok(None))
            }
            Op::Read { file, offset, len } => {
                let Some(f) = pick(&self.model, file, |n| matches!(n, Node::File { .. }), false)
                else {
                    return;
                };
                let ino = self.ino(&f);
                let got = self.mount.read(ino, offset as u64, len as u32);
                let want = match get_mut(&mut self.model, &f) {
                    Node::File { data, .. } => {
                        let s = (offset as usize).min(data.len());
                        let e = (offset as usize + len as usize).min(data.len());
                        data[s..e].to_vec()
                    }
                    _ => unreachable!(),
                };
                (got.map(Some).map_err(|e| err_name(&e)), Ok(Some(want)))
            }
            Op::Unlink { entry } | Op::Rmdir { entry } => {
                let Some(p) = pick(&self.model, entry, |_| true, false) else {
                    return;
                };
                let (d, nm) = split(&p);
                let parent = self.ino(&d);
                let rmdir = matches!(op, Op::Rmdir { .. });
                let got = if rmdir {
                    self.mount.rmdir(parent, nm.as_bytes())
                } else {
                    self.mount.unlink(parent, nm.as_bytes())
                };
                let children = children_mut(&mut self.model, &d);
                let want = match (&children[&nm], rmdir) {
                    (Node::Dir { .. }, false) => Err("IsADirectory"),
                    (Node::Dir { children: c, .. }, true) if !c.is_empty() => Err("NotEmpty"),
                    (Node::Dir { .. }, true) => Ok(None),
                    (_, true) => Err("NotADirectory"),
                    (_, false) => Ok(None),
                };
                if want.is_ok() {
                    children.remove(&nm);
                }
                (got.map(|_| None).map_err(|e| err_name(&e)), want)
            }
            Op::Rename {
                entry,
                dir,
                name,
                no_replace,
            } => {
                let Some(src) = pick(&self.model, entry, |_| true, false) else {
                    return;
                };
                let Some(dst_dir) = pick(&self.model, dir, |n| matches!(n, Node::Dir { .. }), true)
                else {
                    return;
                };
                let nm = NAMES[name];
                let (sd, sn) = split(&src);
                let (sp, dp) = (self.ino(&sd), self.ino(&dst_dir));
                let got = self.mount.rename(
                    sp,
                    sn.as_bytes(),
                    dp,
                    nm.as_bytes(),
                    RenameFlags {
                        no_replace,
                        exchange: false,
                    },
                );
                let dst = format!("{dst_dir}/{nm}");
                let src_node = get_mut(&mut self.model, &src).clone();
                let src_is_dir = matches!(src_node, Node::Dir { .. });
                let dst_node = children_mut(&mut self.model, &dst_dir).get(nm).cloned();
                let want = if src_is_dir
                    && (dst_dir == src || dst_dir.starts_with(&format!("{src}/")))
                {
                    Err("InvalidArgument")
                } else if dst == src {
                    Ok(None)
                } else {
                    match dst_node {
                        Some(_) if no_replace => Err("Exists"),
                        Some(Node::Dir { .. }) if !src_is_dir => Err("IsADirectory"),
                        Some(Node::File { .. } | Node::Symlink(_)) if src_is_dir => {
                            Err("NotADirectory")
                        }
                        Some(Node::Dir { children, .. }) if !children.is_empty() => Err("NotEmpty"),
                        _ => {
                            children_mut(&mut self.model, &sd).remove(&sn);
                            children_mut(&mut self.model, &dst_dir)
                                .insert(nm.to_string(), src_node);
                            Ok(None)
                        }
                    }
                };
                (got.map(|_| None).map_err(|e| err_name(&e)), want)
            }
            Op::Chmod { entry, mode } => {
                let Some(p) = pick(&self.model, entry, |n| !matches!(n, Node::Symlink(_)), true)
                else {
                    return;
                };
                let ino = self.ino(&p);
                let got = self.mount.setattr(
                    ino,
                    SetAttr {
                        mode: Some(mode as u32),
                        ..Default::default()
                    },
                );
                match get_mut(&mut self.model, &p) {
                    Node::File { mode: m, .. } | Node::Dir { mode: m, .. } => *m = mode as u32,
                    _ => unreachable!(),
                }
                (got.map(|_| None).map_err(|e| err_name(&e)), Ok(None))
            }
            Op::SetXattr { entry, name, value } => {
                let Some(p) = pick(
                    &self.model,
                    entry,
                    |n| matches!(n, Node::File { .. }),
                    false,
                ) else {
                    return;
                };
                let ino = self.ino(&p);
                let key = format!("user.{}", NAMES[name]);
                let got =
                    self.mount
                        .setxattr(ino, key.as_bytes(), &[value; 3], XattrFlags::default());
                if let Node::File { xattrs, .. } = get_mut(&mut self.model, &p) {
                    xattrs.insert(key, vec![value; 3]);
                }
                (got.map(|_| None).map_err(|e| err_name(&e)), Ok(None))
            }
            Op::Save => {
                let saved = self.mount.save().unwrap();
                if self.versions.last().map(|v| v.0) != Some(saved.hash) {
                    self.versions.push((saved.hash, self.model.clone()));
                }
                return;
            }
            Op::Reopen => {
                let saved = self.mount.save().unwrap();
                if self.versions.last().map(|v| v.0) != Some(saved.hash) {
                    self.versions.push((saved.hash, self.model.clone()));
                }
                let sd = StateDir::open(&self.state).unwrap();
                let bucket = sd.open_bucket(&self.id, &self.kek).unwrap();
                assert_eq!(bucket.head().unwrap(), saved.hash);
                self.mount = bucket.mount().unwrap();
                return;
            }
            Op::OpenOld { version } => {
                let (hash, snapshot) = self.versions[version % self.versions.len()].clone();
                let sd = StateDir::open(&self.state).unwrap();
                let bucket = sd.open_bucket(&self.id, &self.kek).unwrap();
                let mut old = bucket.open_version(&hash).unwrap();
                compare(&mut old, &snapshot);
                assert!(matches!(
                    old.create(ROOT_INO, b"zz", 0o644, 0, 0),
                    Err(BucketError::ReadOnly)
                ));
                return;
            }
        };
        assert_eq!(got, want, "op {op:?}");
    }
}

/// Compare the whole tree: paths, kinds, bytes, modes, xattrs, symlink
/// targets, and that readdir and lookup agree on inode numbers.
fn compare(mount: &mut Mount, model: &Node) {
    let mut want = Vec::new();
    for (p, n) in model_paths(model) {
        if p.is_empty() {
            continue;
        }
        let kind = match n {
            Node::File { .. } => FileKind::File,
            Node::Dir { .. } => FileKind::Dir,
            Node::Symlink(_) => FileKind::Symlink,
        };
        want.push((p, kind));
    }
    want.sort();
    assert_eq!(path::walk(mount).unwrap(), want);
    for (p, n) in model_paths(model) {
        let ino = path::resolve(mount, &p).unwrap();
        let attr = mount.getattr(ino).unwrap();
        match n {
            Node::File { data, mode, xattrs } => {
                assert_eq!(attr.size, data.len() as u64, "{p}");
                assert_eq!(attr.mode, *mode, "{p}");
                assert_eq!(&path::read_file(mount, &p).unwrap(), data, "{p}");
                let names: Vec<Vec<u8>> = xattrs.keys().map(|k| k.as_bytes().to_vec()).collect();
                assert_eq!(mount.listxattr(ino).unwrap(), names);
                for (k, v) in xattrs {
                    assert_eq!(&mount.getxattr(ino, k.as_bytes()).unwrap(), v);
                }
            }
            Node::Dir { children, mode } => {
                assert_eq!(attr.mode, *mode, "{p}");
                for e in mount.readdir(ino).unwrap() {
                    assert_eq!(mount.lookup(ino, &e.name).unwrap().ino, e.ino);
                    assert!(children.contains_key(std::str::from_utf8(&e.name).unwrap()));
                }
            }
            Node::Symlink(t) => assert_eq!(mount.readlink(ino).unwrap(), t.as_bytes()),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn mount_matches_reference_model(ops in prop::collection::vec(op(), 1..50)) {
        let mut h = Harness::new();
        for op in &ops {
            h.apply(op);
            compare(&mut h.mount, &h.model);
        }
        // Whatever was saved last survives a reopen.
        h.apply(&Op::Reopen);
        compare(&mut h.mount, &h.model);
    }
}

#[test]
fn regression_rename_dir_into_itself_is_rejected() {
    let mut h = Harness::new();
    h.apply(&Op::Mkdir { dir: 0, name: 0 });
    h.apply(&Op::Rename {
        entry: 0,
        dir: 1,
        name: 1,
        no_replace: false,
    });
    compare(&mut h.mount, &h.model);
}
