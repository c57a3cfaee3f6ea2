//! The real `hsda` binary as a child process, for the suites that need the process itself: started with
//! `hsda serve` on a free 127.0.0.1 port, SIGKILLed (no shutdown hook runs) and restarted on the same port
//! and database, its log kept in a file, its resident memory and CPU time read from `/proc`. Used by the
//! crash, fault and chaos tests and by `bench/chaos.rs` and `bench/soak.rs`.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How the process is started, kept for restarts.
struct Launch {
    binary: PathBuf,
    port: u16,
    database_url: String,
    env: Vec<(String, String)>,
    log: Option<PathBuf>,
    /// Whether the first start reads the admin key the server prints (stdout is discarded otherwise).
    read_admin_key: bool,
}

impl Launch {
    fn spawn(&self, read_admin_key: bool) -> std::io::Result<Child> {
        let stderr = match &self.log {
            Some(path) => Stdio::from(OpenOptions::new().create(true).append(true).open(path)?),
            None => Stdio::null(),
        };
        Command::new(&self.binary)
            .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
            .env("HSDA_DATABASE_URL", &self.database_url)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(if read_admin_key { Stdio::piped() } else { Stdio::null() })
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
    }
}

pub struct RealServer {
    child: Child,
    pid: u32,
    launch: Launch,
    pub base: String,
    /// The admin key the server printed at its first start (empty when not asked for).
    pub admin_key: String,
    _dir: Option<tempfile::TempDir>,
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// A port of 127.0.0.1 that was free a moment ago.
pub fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RealServer {
    /// Starts `binary serve` over `database_url` (a database without live API keys: only such a one gets a
    /// starter admin key) with extra `HSDA_*` settings in `env`; waits (bounded by `limit`) for its admin key
    /// and a healthy `/health`. Its log goes to `log` (else nowhere).
    pub async fn start(
        binary: &str,
        database_url: &str,
        env: &[(&str, String)],
        log: Option<&Path>,
        limit: Duration,
    ) -> anyhow::Result<RealServer> {
        let launch = Launch {
            binary: binary.into(),
            port: free_port()?,
            database_url: database_url.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.clone())).collect(),
            log: log.map(Path::to_path_buf),
            read_admin_key: true,
        };
        Self::launch(launch, None, limit).await
    }

    /// For tests: this build's `hsda` over `database_url`, webhook targets on 127.0.0.0/8 allowed, short
    /// retries and a 5 s delivery timeout, its log in a temporary file ([`RealServer::log`]); `env` adds or
    /// overrides `HSDA_*` settings. Waits (bounded) until `/health` answers.
    pub async fn start_for_test(database_url: &str, env: &[(&str, &str)]) -> RealServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut settings: Vec<(String, String)> = [
            ("HSDA_ALLOW_TARGETS", "127.0.0.0/8"),
            ("HSDA_RETRY_SCHEDULE", "0.2,0.2,0.5,1"),
            ("HSDA_DELIVERY_TIMEOUT_SECONDS", "5"),
            ("RUST_LOG", "hsda=info,tower_http=warn"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        settings.extend(env.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        let launch = Launch {
            binary: env!("CARGO_BIN_EXE_hsda").into(),
            port: free_port().expect("a free port"),
            database_url: database_url.to_string(),
            env: settings,
            log: Some(dir.path().join("hsda.log")),
            read_admin_key: false,
        };
        let log = launch.log.clone();
        match Self::launch(launch, Some(dir), Duration::from_secs(20)).await {
            Ok(server) => server,
            Err(e) => panic!("hsda did not start ({e}); its log:\n{}", read_log(log.as_deref())),
        }
    }

    async fn launch(launch: Launch, dir: Option<tempfile::TempDir>, limit: Duration) -> anyhow::Result<RealServer> {
        let mut child = launch.spawn(launch.read_admin_key)?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("hsda exited at once"))?;
        let admin_key = match child.stdout.take() {
            Some(stdout) if launch.read_admin_key => {
                let mut lines = BufReader::new(stdout).lines();
                let read_key = async {
                    while let Some(line) = lines.next_line().await? {
                        if let Some(key) = line.strip_prefix("admin API key (shown once): ") {
                            return Ok(key.trim().to_string());
                        }
                    }
                    anyhow::bail!("hsda closed its output without printing an admin key")
                };
                tokio::time::timeout(limit, read_key).await.map_err(|_| anyhow::anyhow!("hsda start"))??
            }
            _ => String::new(),
        };
        let base = format!("http://127.0.0.1:{}", launch.port);
        let server = RealServer { child, pid, launch, base, admin_key, _dir: dir };
        server.wait_healthy(limit).await?;
        Ok(server)
    }

    async fn wait_healthy(&self, limit: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + limit;
        while tokio::time::Instant::now() < deadline {
            let health = client.get(self.url("/health")).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("hsda never answered /health")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Everything the process (and its earlier runs) logged, when it logs to a file.
    pub fn log(&self) -> String {
        read_log(self.launch.log.as_deref())
    }

    /// CPU time used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub async fn kill9(&mut self) {
        self.child.kill().await.expect("SIGKILL hsda");
    }

    /// Starts it again (after [`RealServer::kill9`]) on the same port and database; waits for `/health`.
    pub async fn restart(&mut self) {
        self.child = self.launch.spawn(false).expect("restart hsda");
        self.pid = self.child.id().unwrap_or_default();
        if let Err(e) = self.wait_healthy(Duration::from_secs(20)).await {
            panic!("hsda did not restart ({e}); its log:\n{}", self.log());
        }
    }

    /// SIGTERM, as a service manager stops a process; returns how it exited (bounded wait).
    pub async fn terminate(&mut self) -> std::process::ExitStatus {
        let sent = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status().await.expect("kill -TERM");
        assert!(sent.success(), "SIGTERM sent");
        match tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await {
            Ok(status) => status.expect("exit status"),
            Err(_) => panic!("hsda did not stop within 20 s of SIGTERM; its log:\n{}", self.log()),
        }
    }

    /// SIGKILLs the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

fn read_log(path: Option<&Path>) -> String {
    path.and_then(|p| std::fs::read_to_string(p).ok()).unwrap_or_default()
}

/// Resident memory of process `pid` (`VmRSS` in `/proc/PID/status`), in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// CPU time of process `pid` so far, user plus system (`/proc/PID/stat`, in clock ticks of 1/100 s as on Linux).
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis are fixed.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Samples the resident memory of `pid` every `every` until `stop`; returns (seconds since start, KiB) pairs.
pub fn sample_rss(
    pid: u32,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<Vec<(f64, u64)>> {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let mut samples = Vec::new();
        let mut ticker = tokio::time::interval(every);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                _ = stop.cancelled() => return samples,
            }
            match rss_kib(pid) {
                Some(kib) => samples.push((started.elapsed().as_secs_f64(), kib)),
                None => return samples, // the process is gone
            }
        }
    })
}
