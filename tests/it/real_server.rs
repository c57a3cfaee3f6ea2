//! The real `hsda` binary as a child process, for the suites that measure the process itself (memory, CPU):
//! started with `hsda serve` on a free 127.0.0.1 port, its admin key read from its standard output, its
//! resident memory and CPU time read from `/proc`. Also used by `bench/chaos.rs` and `bench/soak.rs`.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub struct RealServer {
    child: Child,
    pid: u32,
    pub base: String,
    pub admin_key: String,
}

impl Drop for RealServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl RealServer {
    /// Starts `binary serve` over `database_url` with extra `HSDA_*` settings in `env`; waits (bounded by
    /// `limit`) for its admin key and a healthy `/health`. Its log goes to `log` (else nowhere).
    pub async fn start(
        binary: &str,
        database_url: &str,
        env: &[(&str, String)],
        log: Option<&Path>,
        limit: Duration,
    ) -> anyhow::Result<RealServer> {
        let port = free_port()?;
        let stderr = match log {
            Some(path) => Stdio::from(std::fs::File::create(path)?),
            None => Stdio::null(),
        };
        let mut command = Command::new(binary);
        command
            .args(["serve", "--bind", &format!("127.0.0.1:{port}")])
            .env("HSDA_DATABASE_URL", database_url)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true);
        let mut child = command.spawn()?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("hsda exited at once"))?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
        let mut lines = BufReader::new(stdout).lines();
        let read_key = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(key) = line.strip_prefix("admin API key (shown once): ") {
                    return Ok(key.trim().to_string());
                }
            }
            anyhow::bail!("hsda closed its output without printing an admin key")
        };
        let admin_key = tokio::time::timeout(limit, read_key).await.map_err(|_| anyhow::anyhow!("hsda start"))??;
        let server = RealServer { child, pid, base: format!("http://127.0.0.1:{port}"), admin_key };
        let client = reqwest::Client::new();
        for _ in 0..200 {
            let health = client.get(format!("{}/health", server.base)).send().await;
            if health.is_ok_and(|r| r.status().is_success()) {
                return Ok(server);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("hsda never answered /health")
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// CPU time used so far.
    pub fn cpu_time(&self) -> Option<Duration> {
        cpu_time(self.pid)
    }

    /// SIGKILLs the process and waits for it.
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
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
