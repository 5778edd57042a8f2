//! A private, throwaway PostgreSQL cluster started from the locally installed
//! binaries: for tests and for `jax-csi local`.
//!
//! `initdb` refuses to run as root, so when we are root the data and socket
//! directories are handed to the `postgres` system user and the server runs
//! as that user. The server listens only on a unix socket in a short
//! directory (socket paths are limited to 108 bytes). Dropping the handle
//! stops the server (fast shutdown, then SIGKILL after a deadline).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use nix::unistd::{chown, Gid, Uid, User};

/// How long a cluster may take to start or stop before we give up.
const DEADLINE: Duration = Duration::from_secs(30);
/// The database created in every cluster.
pub const DATABASE: &str = "jax";

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
    /// missing; an initialised cluster there is reused with its data).
    pub fn start(dir: &Path, opts: EmbeddedPostgresOptions) -> Result<Self, EmbeddedPgError> {
        let bin = find_pg_bin_dir().ok_or(EmbeddedPgError::NoBinaries)?;
        let run_as = if Uid::effective().is_root() {
            let user = User::from_name("postgres")
                .ok()
                .flatten()
                .ok_or(EmbeddedPgError::NoPostgresUser)?;
            Some((user.uid, user.gid))
        } else {
            None
        };
        let user = match run_as {
            Some(_) => "postgres".to_string(),
            None => User::from_uid(Uid::effective())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "postgres".into()),
        };
        std::fs::create_dir_all(dir).map_err(io(format!("creating {}", dir.display())))?;
        if let Some((uid, gid)) = run_as {
            check_reachable(dir, uid, gid)?;
        }
        let data_dir = dir.join("pgdata");
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
            stopped: true,
        };
        pg.hand_over(dir)?;
        pg.hand_over(&pg.socket_dir.clone())?;
        if !pg.data_dir.join("PG_VERSION").exists() {
            pg.initdb()?;
        }
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

    /// Stop the server and report any failure.
    pub fn stop(mut self) -> Result<(), EmbeddedPgError> {
        self.shutdown()
    }

    fn shutdown(&mut self) -> Result<(), EmbeddedPgError> {
        if self.stopped {
            return Ok(());
        }
        self.stopped = true;
        let pid = self.pid();
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "-t", "20", "stop"]);
        if self.run(c, "pg_ctl stop").is_ok() {
            return Ok(());
        }
        if let Some(pid) = pid {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) {
                if !process_alive(pid) {
                    return Ok(());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err(EmbeddedPgError::StopTimeout(DEADLINE))
    }
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

impl Drop for EmbeddedPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "stopping the embedded postgres failed");
        }
    }
}
