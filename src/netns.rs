//! Private networks for multi-node tests and benchmarks (root only): a
//! "switch" namespace holding a bridge, and one namespace per node joined to
//! it by a veth pair, each with its own address. Traffic never leaves these
//! namespaces. Links can be cut and healed. Everything is removed on drop.

use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::process::Command;

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A bridge and the nodes plugged into it.
pub struct Net {
    tag: String,
    switch: String,
    nodes: Vec<String>,
    mtu: u32,
}

impl Net {
    /// A network for `n` nodes, addresses 10.231.7.1 .. n, MTU 1500.
    pub fn new(n: usize) -> Self {
        Self::with_mtu(n, 1500)
    }

    /// [`Net::new`] with links of `mtu` bytes.
    pub fn with_mtu(n: usize, mtu: u32) -> Self {
        // Short, unique per test process and test (interface names are
        // limited to 15 bytes).
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("{:x}{k}", std::process::id() % 0xfffff);
        let switch = format!("jx{tag}s");
        ip(&["netns", "add", &switch]);
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &switch, "link", "set", "br0", "up"]);
        let mut net = Self {
            tag,
            switch,
            nodes: Vec::new(),
            mtu,
        };
        for i in 0..n {
            net.add_node(i);
        }
        net
    }

    fn add_node(&mut self, i: usize) {
        let mtu = self.mtu.to_string();
        let ns = format!("jx{}n{i}", self.tag);
        let (inside, outside) = (format!("jx{}i{i}", self.tag), format!("jx{}o{i}", self.tag));
        ip(&["netns", "add", &ns]);
        ip(&[
            "link", "add", &inside, "type", "veth", "peer", "name", &outside,
        ]);
        ip(&["link", "set", &inside, "netns", &ns]);
        ip(&["link", "set", &outside, "netns", &self.switch]);
        ip(&["-n", &self.switch, "link", "set", &outside, "mtu", &mtu]);
        ip(&["-n", &self.switch, "link", "set", &outside, "master", "br0"]);
        ip(&["-n", &self.switch, "link", "set", &outside, "up"]);
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&["-n", &ns, "link", "set", &inside, "name", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "mtu", &mtu]);
        let addr = format!("{}/24", self.addr(i));
        ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
        ip(&["-n", &ns, "link", "set", "eth0", "up"]);
        self.nodes.push(ns);
    }

    /// Node `i`'s address.
    pub fn addr(&self, i: usize) -> Ipv4Addr {
        Ipv4Addr::new(10, 231, 7, 1 + i as u8)
    }

    /// Node `i`'s namespace name.
    pub fn ns(&self, i: usize) -> &str {
        &self.nodes[i]
    }

    /// Cut node `i` off the bridge (its side of the link goes down).
    pub fn cut(&self, i: usize) {
        let outside = format!("jx{}o{i}", self.tag);
        ip(&["-n", &self.switch, "link", "set", &outside, "down"]);
    }

    /// Plug node `i` back in.
    pub fn heal(&self, i: usize) {
        let outside = format!("jx{}o{i}", self.tag);
        ip(&["-n", &self.switch, "link", "set", &outside, "up"]);
    }

    /// `ip netns exec` into node `i`'s namespace (for tools that need no
    /// view of our mounts, such as curl).
    pub fn exec(&self, i: usize, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.nodes[i], program]);
        c
    }

    /// Make `cmd` run in node `i`'s network namespace (only the network:
    /// its mounts stay visible to the caller).
    pub fn enter(&self, i: usize, cmd: &mut Command) {
        use std::os::unix::process::CommandExt;
        let path = format!("/var/run/netns/{}", self.nodes[i]);
        let file = std::fs::File::open(&path).expect("the namespace exists");
        unsafe {
            cmd.pre_exec(move || {
                nix::sched::setns(file.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)
            });
        }
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.nodes.iter().chain(std::iter::once(&self.switch)) {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
