//! A private, throwaway PostgreSQL cluster started from the locally installed
//! binaries: for tests and for `jax-csi local`.
//!
//! `initdb` refuses to run as root, so when we are root the data and socket
//! directories are handed to the `postgres` system user and the server runs
//! as that user. When that user cannot reach the requested directory (a
//! state dir under `/root` or a 0700 `mktemp -d`), the data lives in a
//! directory of its own under [`RELOCATION_BASE`] instead, recorded in the
//! requested directory's `LOCATION` file so later runs find it. The server
//! listens only on a unix socket in a short directory (socket paths are
//! limited to 108 bytes). One handle at a time owns a data directory (an
//! exclusive lock); a server left running by a killed owner is stopped
//! before a new one starts. Dropping the handle stops the server (fast
//! shutdown, then SIGKILL after a deadline).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{chown, Gid, Uid, User};

/// How long a cluster may take to start or stop before we give up.
const DEADLINE: Duration = Duration::from_secs(30);
/// The database created in every cluster.
pub const DATABASE: &str = "jax";
/// Where root keeps data directories the `postgres` user could not reach
/// where they were asked for (overridable with `JAX_PG_RELOCATE_DIR`).
pub const RELOCATION_BASE: &str = "/var/lib/jax-csi-local";
/// The file in the requested directory naming a relocated data directory.
const LOCATION_FILE: &str = "LOCATION";
/// The lock file in the requested directory, held by the handle that owns the cluster.
const LOCK_FILE: &str = "embedded.lock";

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedPgError {
    #[error("no PostgreSQL binaries found under /usr/lib/postgresql/*/bin (install the `postgresql` package or set JAX_PG_BIN)")]
    NoBinaries,
    #[error("running as root but there is no `postgres` system user to run the server as")]
    NoPostgresUser,
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {output}")]
    Command {
        command: String,
        status: String,
        output: String,
    },
    #[error("postgres did not become ready within {0:?}; server log tail:\n{1}")]
    StartTimeout(Duration, String),
    #[error("postgres did not stop within {0:?}")]
    StopTimeout(Duration),
    #[error("the `postgres` user cannot enter {path} (mode {mode:o}, owner uid {owner}): pick a state directory it can reach, or allow it with `chmod o+x {path}`")]
    Unreachable { path: String, mode: u32, owner: u32 },
    #[error("another process already runs the embedded Postgres in {0} (its lock file is held)")]
    InUse(String),
    #[error(
        "{path} names the data directory {target}, which is not an embedded Postgres directory"
    )]
    BadLocation { path: String, target: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> EmbeddedPgError {
    let what = what.into();
    move |source| EmbeddedPgError::Io { what, source }
}

/// Options for [`EmbeddedPostgres::start`].
#[derive(Clone, Debug)]
pub struct EmbeddedPostgresOptions {
    /// Durable commits; off makes tests faster and is never right for real data.
    pub fsync: bool,
}

impl Default for EmbeddedPostgresOptions {
    fn default() -> Self {
        Self { fsync: true }
    }
}

/// Fail early, and clearly, when the server's user could not enter one of
/// `dir`'s ancestors (initdb would only say "Permission denied" deep inside).
fn check_reachable(dir: &Path, uid: Uid, gid: Gid) -> Result<(), EmbeddedPgError> {
    use std::os::unix::fs::MetadataExt;
    let dir = dir
        .canonicalize()
        .map_err(io(format!("resolving {}", dir.display())))?;
    for ancestor in dir.ancestors().skip(1) {
        let meta =
            std::fs::metadata(ancestor).map_err(io(format!("reading {}", ancestor.display())))?;
        let search = if meta.uid() == uid.as_raw() {
            0o100
        } else if meta.gid() == gid.as_raw() {
            0o010
        } else {
            0o001
        };
        if meta.mode() & search == 0 {
            return Err(EmbeddedPgError::Unreachable {
                path: ancestor.display().to_string(),
                mode: meta.mode() & 0o7777,
                owner: meta.uid(),
            });
        }
    }
    Ok(())
}

/// Where the data of a cluster asked for in `dir` lives: `dir` itself, or,
/// when the server's user cannot reach `dir`, a directory of its own under
/// the relocation base (recorded in `dir/LOCATION`, reused by later runs).
fn data_parent(dir: &Path, run_as: Option<(Uid, Gid)>) -> Result<PathBuf, EmbeddedPgError> {
    let location = dir.join(LOCATION_FILE);
    if let Some(target) = read_location(dir)? {
        std::fs::create_dir_all(&target).map_err(io(format!("creating {}", target.display())))?;
        return Ok(target);
    }
    let Some((uid, gid)) = run_as else {
        return Ok(dir.to_path_buf());
    };
    let Err(unreachable) = check_reachable(dir, uid, gid) else {
        return Ok(dir.to_path_buf());
    };
    let base = relocation_base();
    create_dir_mode(&base, 0o755)?;
    let canonical = dir
        .canonicalize()
        .map_err(io(format!("resolving {}", dir.display())))?;
    let name = blake3::hash(canonical.as_os_str().as_encoded_bytes()).to_hex();
    let target = base.join(&name.as_str()[..24]);
    // No LOCATION file means no earlier run recorded this directory: what is
    // there belonged to a state dir since deleted and recreated (with a
    // new KEK, so its records could not be opened anyway).
    if target.exists() {
        std::fs::remove_dir_all(&target)
            .map_err(io(format!("removing the stale {}", target.display())))?;
    }
    create_dir_mode(&target, 0o700)?;
    if check_reachable(&target, uid, gid).is_err() {
        return Err(unreachable);
    }
    crate::durable::write_atomic(
        &location,
        format!("{}\n", target.display()).as_bytes(),
        0o644,
    )
    .map_err(io(format!("writing {}", location.display())))?;
    tracing::info!(
        requested = %dir.display(),
        data = %target.display(),
        "the postgres user cannot reach the state dir; its Postgres data lives elsewhere"
    );
    Ok(target)
}

/// The relocated data directory recorded in `dir/LOCATION`, if any.
fn read_location(dir: &Path) -> Result<Option<PathBuf>, EmbeddedPgError> {
    let location = dir.join(LOCATION_FILE);
    let Ok(text) = std::fs::read_to_string(&location) else {
        return Ok(None);
    };
    let target = PathBuf::from(text.trim());
    if !target.is_absolute() || !target.starts_with(relocation_base()) {
        return Err(EmbeddedPgError::BadLocation {
            path: location.display().to_string(),
            target: target.display().to_string(),
        });
    }
    Ok(Some(target))
}

/// Who runs the server: as root, the `postgres` system user (uid, gid and
/// name); otherwise ourselves.
fn server_user() -> Result<(Option<(Uid, Gid)>, String), EmbeddedPgError> {
    if Uid::effective().is_root() {
        let user = User::from_name("postgres")
            .ok()
            .flatten()
            .ok_or(EmbeddedPgError::NoPostgresUser)?;
        return Ok((Some((user.uid, user.gid)), "postgres".into()));
    }
    let name = User::from_uid(Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "postgres".into());
    Ok((None, name))
}

fn relocation_base() -> PathBuf {
    std::env::var_os("JAX_PG_RELOCATE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(RELOCATION_BASE))
}

fn create_dir_mode(dir: &Path, mode: u32) -> Result<(), EmbeddedPgError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", dir.display())))
}

/// The directory with `initdb`, `pg_ctl` and `postgres`: `JAX_PG_BIN`, or the
/// newest `/usr/lib/postgresql/<version>/bin`.
pub fn find_pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("JAX_PG_BIN") {
        let dir = PathBuf::from(dir);
        return dir.join("initdb").exists().then_some(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin)
}

/// A running private cluster; stopped on drop.
#[derive(Debug)]
pub struct EmbeddedPostgres {
    bin: PathBuf,
    data_dir: PathBuf,
    socket_dir: PathBuf,
    port: u16,
    user: String,
    run_as: Option<(Uid, Gid)>,
    /// Temp dirs removed after stopping (the whole cluster, for `start_temp`).
    _temp: Vec<tempfile::TempDir>,
    /// Held while this handle owns the data directory.
    _lock: Option<Flock<std::fs::File>>,
    stopped: bool,
}

static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// A port number unlikely to collide with another cluster on this machine.
fn pick_port() -> u16 {
    let base = 20_000 + (std::process::id() % 20_000) as u16;
    base.wrapping_add(NEXT_PORT.fetch_add(1, Ordering::Relaxed) * 7) % 45_000 + 20_000
}

impl EmbeddedPostgres {
    /// Start a cluster in a fresh temp dir that is removed on drop (for tests).
    pub fn start_temp() -> Result<Self, EmbeddedPgError> {
        let dir = tempfile::Builder::new()
            .prefix("jaxpg-")
            .tempdir()
            .map_err(io("creating a temp dir"))?;
        let mut pg = Self::start(dir.path(), EmbeddedPostgresOptions { fsync: false })?;
        pg._temp.push(dir);
        Ok(pg)
    }

    /// Start a cluster whose data lives under `dir/pgdata` (created if
    /// missing; an initialised cluster there is reused with its data), or
    /// in its relocated directory when the server's user cannot reach `dir`.
    pub fn start(dir: &Path, opts: EmbeddedPostgresOptions) -> Result<Self, EmbeddedPgError> {
        let bin = find_pg_bin_dir().ok_or(EmbeddedPgError::NoBinaries)?;
        let (run_as, user) = server_user()?;
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        // The lock in the requested dir also covers choosing a relocation.
        let lock = lock_dir(dir)?;
        let parent = data_parent(dir, run_as)?;
        let data_dir = parent.join("pgdata");
        // A short socket dir: unix socket paths are limited to 108 bytes.
        let socket_tmp = tempfile::Builder::new()
            .prefix("jaxpg-sock-")
            .tempdir_in("/tmp")
            .map_err(io("creating the socket dir"))?;
        let socket_dir = socket_tmp.path().to_path_buf();
        let mut pg = Self {
            bin,
            data_dir,
            socket_dir,
            port: 0,
            user,
            run_as,
            _temp: vec![socket_tmp],
            _lock: Some(lock),
            stopped: true,
        };
        pg.hand_over(&parent)?;
        pg.hand_over(&pg.socket_dir.clone())?;
        if !pg.data_dir.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
        pg.stop_orphan()?;
        let mut last_err = None;
        for _ in 0..5 {
            pg.port = pick_port();
            match pg.launch(&opts) {
                Ok(()) => {
                    pg.stopped = false;
                    pg.create_database()?;
                    return Ok(pg);
                }
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// A server still running on our data directory was left by an owner
    /// that died without stopping it (we hold the lock, so no live handle
    /// owns it): stop it, and remove the socket directory it was using.
    fn stop_orphan(&self) -> Result<(), EmbeddedPgError> {
        let pid_file = self.data_dir.join("postmaster.pid");
        let Ok(text) = std::fs::read_to_string(&pid_file) else {
            return Ok(());
        };
        let mut lines = text.lines();
        let pid: Option<i32> = lines.next().and_then(|l| l.trim().parse().ok());
        let old_socket_dir = lines.nth(3).map(|l| PathBuf::from(l.trim()));
        match pid {
            Some(pid) if process_alive(pid) && is_postgres(pid) => {
                tracing::warn!(
                    pid,
                    data = %self.data_dir.display(),
                    "stopping a Postgres left running by an earlier run that was killed"
                );
                self.stop_server(Some(pid))?;
            }
            // A stale file naming a dead (or recycled) pid: the server
            // would refuse to start while a live process holds that pid.
            _ => {
                let _ = std::fs::remove_file(&pid_file);
            }
        }
        if let Some(old) = old_socket_dir {
            let is_ours = old
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("jaxpg-sock-"));
            if is_ours && old.parent() == Some(Path::new("/tmp")) && old != self.socket_dir {
                let _ = std::fs::remove_dir_all(&old);
            }
        }
        Ok(())
    }

    /// Stop a server a killed owner left running on the cluster asked for in
    /// `dir` (for `local down`); its pid, if there was one. Refused while a
    /// live handle owns the cluster.
    pub fn stop_leftover(dir: &Path) -> Result<Option<i32>, EmbeddedPgError> {
        if !dir.exists() {
            return Ok(None);
        }
        let bin = find_pg_bin_dir().ok_or(EmbeddedPgError::NoBinaries)?;
        let (run_as, user) = server_user()?;
        let lock = lock_dir(dir)?;
        let parent = read_location(dir)?.unwrap_or_else(|| dir.to_path_buf());
        let pg = Self {
            bin,
            data_dir: parent.join("pgdata"),
            socket_dir: PathBuf::new(),
            port: 0,
            user,
            run_as,
            _temp: Vec::new(),
            _lock: Some(lock),
            stopped: true,
        };
        let running = pg.pid().filter(|&p| process_alive(p) && is_postgres(p));
        pg.stop_orphan()?;
        Ok(running)
    }

    /// Give a directory to the server's user when we run as root.
    fn hand_over(&self, dir: &Path) -> Result<(), EmbeddedPgError> {
        if let Some((uid, gid)) = self.run_as {
            chown(dir, Some(uid), Some(gid)).map_err(|e| EmbeddedPgError::Io {
                what: format!("chown {}", dir.display()),
                source: e.into(),
            })?;
        }
        Ok(())
    }

    fn command(&self, program: &str) -> Command {
        let mut c = Command::new(self.bin.join(program));
        if let Some((uid, gid)) = self.run_as {
            c.uid(uid.as_raw()).gid(gid.as_raw());
        }
        // The server user may not be able to enter our working directory.
        c.current_dir("/");
        c.env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT");
        c
    }

    fn run(&self, mut cmd: Command, what: &str) -> Result<String, EmbeddedPgError> {
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .map_err(io(format!("running {what}")))?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(EmbeddedPgError::Command {
                command: what.to_string(),
                status: out.status.to_string(),
                output: text,
            });
        }
        Ok(text)
    }

    fn initdb(&self) -> Result<(), EmbeddedPgError> {
        let mut c = self.command("initdb");
        c.arg("-D").arg(&self.data_dir).args([
            "-U",
            &self.user,
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-instructions",
        ]);
        self.run(c, "initdb").map(|_| ())
    }

    fn log_path(&self) -> PathBuf {
        self.data_dir.join("server.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn launch(&self, opts: &EmbeddedPostgresOptions) -> Result<(), EmbeddedPgError> {
        let mut c = self.command("pg_ctl");
        let server_opts = format!(
            "-k {} -p {} -c listen_addresses='' -c fsync={} -c max_connections=200",
            self.socket_dir.display(),
            self.port,
            if opts.fsync { "on" } else { "off" },
        );
        c.arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(self.log_path())
            .arg("-o")
            .arg(server_opts)
            .args(["-w", "-t", &DEADLINE.as_secs().to_string(), "start"]);
        match self.run(c, "pg_ctl start") {
            Ok(_) => self.wait_ready(),
            Err(_) => Err(EmbeddedPgError::StartTimeout(DEADLINE, self.log_tail())),
        }
    }

    /// Poll `pg_isready` until the server accepts connections.
    fn wait_ready(&self) -> Result<(), EmbeddedPgError> {
        let start = Instant::now();
        while start.elapsed() < DEADLINE {
            let mut c = self.command("pg_isready");
            c.arg("-h")
                .arg(&self.socket_dir)
                .args(["-p", &self.port.to_string(), "-q"]);
            if c.status().map(|s| s.success()).unwrap_or(false) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(EmbeddedPgError::StartTimeout(DEADLINE, self.log_tail()))
    }

    fn create_database(&self) -> Result<(), EmbeddedPgError> {
        let out = self.psql(
            "postgres",
            &format!("SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'"),
        )?;
        if out.trim() != "1" {
            let mut c = self.command("createdb");
            c.arg("-h").arg(&self.socket_dir).args([
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
                DATABASE,
            ]);
            self.run(c, "createdb")?;
        }
        Ok(())
    }

    /// Run one SQL statement with `psql` and return its unaligned output.
    pub fn psql(&self, database: &str, sql: &str) -> Result<String, EmbeddedPgError> {
        let mut c = self.command("psql");
        c.arg("-h").arg(&self.socket_dir).args([
            "-p",
            &self.port.to_string(),
            "-U",
            &self.user,
            "-d",
            database,
            "-X",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            sql,
        ]);
        self.run(c, "psql")
    }

    /// A URL for sqlx and other clients, connecting over the unix socket.
    pub fn database_url(&self) -> String {
        format!(
            "postgres://{}@localhost/{DATABASE}?host={}&port={}",
            self.user,
            self.socket_dir.display(),
            self.port
        )
    }

    pub fn socket_dir(&self) -> &Path {
        &self.socket_dir
    }

    /// The role clients connect as.
    pub fn user(&self) -> &str {
        &self.user
    }

    /// Where the server's binaries (and its client tools) are.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The postmaster's pid, from `postmaster.pid`.
    pub fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.data_dir.join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Stop the server but keep the handle, its data and its address: an
    /// outage, which [`EmbeddedPostgres::resume`] ends at the same URL.
    pub fn pause(&mut self) -> Result<(), EmbeddedPgError> {
        self.shutdown()
    }

    /// Start a paused server again, on the same port and socket dir.
    pub fn resume(&mut self, opts: EmbeddedPostgresOptions) -> Result<(), EmbeddedPgError> {
        if !self.stopped {
            return Ok(());
        }
        self.launch(&opts)?;
        self.stopped = false;
        Ok(())
    }

    /// Stop the server and report any failure.
    pub fn stop(mut self) -> Result<(), EmbeddedPgError> {
        self.shutdown()
    }

    /// Stop the server and delete its data (and any relocated directory).
    pub fn stop_and_remove_data(mut self) -> Result<(), EmbeddedPgError> {
        self.shutdown()?;
        let parent = self.data_dir.parent().map(Path::to_path_buf);
        std::fs::remove_dir_all(&self.data_dir)
            .map_err(io(format!("removing {}", self.data_dir.display())))?;
        if let Some(parent) = parent.filter(|p| p.starts_with(relocation_base())) {
            let _ = std::fs::remove_dir_all(parent);
        }
        Ok(())
    }

    fn shutdown(&mut self) -> Result<(), EmbeddedPgError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        self.stop_server(self.pid())
    }

    /// `pg_ctl stop -m fast`, then SIGKILL to `pid` if that did not work.
    fn stop_server(&self, pid: Option<i32>) -> Result<(), EmbeddedPgError> {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "20", "stop"]);
        if self.run(c, "pg_ctl stop").is_ok() {
            // pg_ctl returns once the pid file is gone, a moment before the
            // postmaster has exited: "stopped" means the process is gone.
            if let Some(pid) = pid {
                wait_exited(pid, Duration::from_secs(10));
            }
            return Ok(());
        }
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            if wait_exited(pid, Duration::from_secs(10)) {
                return Ok(());
            }
        }
        Err(EmbeddedPgError::StopTimeout(DEADLINE))
    }
}

/// Take the data directory's lock, or say who holds it.
fn lock_dir(parent: &Path) -> Result<Flock<std::fs::File>, EmbeddedPgError> {
    let path = parent.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(io(format!("opening {}", path.display())))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map_err(|_| EmbeddedPgError::InUse(parent.display().to_string()))
}

/// True if `pid` runs a `postgres` binary (not a recycled pid).
fn is_postgres(pid: i32) -> bool {
    std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n == "postgres"))
        .unwrap_or(false)
}

/// True if `pid` is running. A zombie (exited, not yet reaped by whatever
/// adopted the daemonised postmaster) counts as gone.
pub fn process_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Wait up to `timeout` for process `pid` to exit; true if it did.
pub fn wait_exited(pid: i32, timeout: Duration) -> bool {
    let start = Instant::now();
    while process_alive(pid) {
        if start.elapsed() > timeout {
            return false;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    true
}

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "stopping the embedded postgres failed");
        }
    }
}
