//! The real `hsda` binary as a child process: `serve` on a free port of 127.0.0.1 with the given environment,
//! its log appended to a file the test can read, SIGKILLed (no shutdown hook runs) and restarted on the same
//! port and database.

use std::fs::OpenOptions;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// How to start the process again.
struct Launch {
    port: u16,
    database_url: String,
    env: Vec<(String, String)>,
    log: PathBuf,
}

impl Launch {
    fn spawn(&self) -> Child {
        let log = OpenOptions::new().create(true).append(true).open(&self.log).expect("log file");
        Command::new(env!("CARGO_BIN_EXE_hsda"))
            .args(["serve", "--bind", &format!("127.0.0.1:{}", self.port)])
            .env("HSDA_DATABASE_URL", &self.database_url)
            .env("HSDA_ALLOW_TARGETS", "127.0.0.0/8")
            .env("HSDA_RETRY_SCHEDULE", "0.2,0.2,0.5,1")
            .env("HSDA_DELIVERY_TIMEOUT_SECONDS", "5")
            .env("RUST_LOG", "hsda=info,tower_http=warn")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start hsda")
    }
}

pub struct Hsda {
    child: Child,
    launch: Launch,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Hsda {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Hsda {
    /// Starts `hsda serve` over `database_url` (migrating it) and waits (bounded) until `/health` answers 200.
    /// Webhook targets on 127.0.0.0/8 are allowed; `env` adds or overrides `HSDA_*` settings.
    pub async fn start(database_url: &str, env: &[(&str, &str)]) -> Hsda {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let launch = Launch {
            port,
            database_url: database_url.to_string(),
            env: env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            log: dir.path().join("hsda.log"),
        };
        let hsda = Hsda { child: launch.spawn(), launch, port, _dir: dir };
        hsda.wait_healthy().await;
        hsda
    }

    async fn wait_healthy(&self) {
        let client = reqwest::Client::new();
        for _ in 0..400 {
            if client.get(self.url("/health")).send().await.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("hsda did not start; its log:\n{}", self.log());
    }

    /// SIGKILL: the process gets no chance to finish anything.
    pub fn kill9(&mut self) {
        self.child.kill().expect("SIGKILL hsda");
        self.child.wait().expect("reap hsda");
    }

    /// Starts it again (after [`Hsda::kill9`]) on the same port and database.
    pub async fn restart(&mut self) {
        self.child = self.launch.spawn();
        self.wait_healthy().await;
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Everything the process (and its earlier runs) logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.launch.log).unwrap_or_default()
    }
}
