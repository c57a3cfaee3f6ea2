//! Configuration: command-line flags, each with an `HSDA_*` environment twin, over an optional TOML file
//! (`--config`, see `config.example.toml`), over built-in defaults. Validated once at start-up. The file holds
//! every command's settings: one file serves them all, so a command takes its own and leaves the others'.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use serde::Deserialize;

use crate::cli::ExportFormat;
use crate::store::keys::Scope;

/// A secret setting (a key sent to another server): its debug form, which logs and panics show, hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// Settings shared by every command.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Flags {
    /// TOML file with any command's settings, as in config.example.toml (flags and environment variables win
    /// over it).
    #[arg(long, env = "HSDA_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// `sqlite://FILE` (default `sqlite://hsda.db`; export and keys list/revoke refuse a FILE that does not
    /// exist, the other commands create it) or `postgres://USER@HOST/DB`.
    #[arg(long, env = "HSDA_DATABASE_URL", global = true)]
    pub database_url: Option<String>,
}

/// Settings of `hsda serve`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServeFlags {
    /// Address to listen on (default 127.0.0.1:8080).
    #[arg(long, env = "HSDA_BIND")]
    pub bind: Option<SocketAddr>,
    /// Load generated demo data when the directory is empty. `--demo` alone means true; `--demo=false` and
    /// `HSDA_DEMO=false|0|no` override a config file's `demo = true`.
    #[arg(long, env = "HSDA_DEMO", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub demo: Option<bool>,
    /// Number of services the demo data has (default 2000).
    #[arg(long, env = "HSDA_DEMO_SERVICES")]
    pub demo_services: Option<usize>,
    /// Require an API key for reads too (reads are public by default, as Open Referral asks). Takes a value
    /// like `--demo` does (true/false, 1/0, yes/no), so the environment can turn off what the file turned on.
    #[arg(long, env = "HSDA_REQUIRE_KEY_FOR_READS", num_args = 0..=1, default_missing_value = "true", value_parser = clap::builder::BoolishValueParser::new())]
    pub require_key_for_reads: Option<bool>,
    /// Largest accepted request body in bytes (default 4 MiB).
    #[arg(long, env = "HSDA_MAX_BODY_BYTES")]
    pub max_body_bytes: Option<usize>,
    /// Comma-separated CIDRs exempt from the SSRF guard, e.g. `127.0.0.0/8,::1/128`.
    #[arg(long, env = "HSDA_ALLOW_TARGETS")]
    pub allow_targets: Option<String>,
    /// DNS server (IP:port) that webhook target names are resolved at, instead of the system resolver.
    #[arg(long, env = "HSDA_DNS_SERVER")]
    pub dns_server: Option<SocketAddr>,
    /// Comma-separated webhook retry delays in seconds (default 5,300,1800,7200,18000,36000,50400,72000,86400).
    #[arg(long, env = "HSDA_RETRY_SCHEDULE")]
    pub retry_schedule: Option<String>,
    /// The URL clients reach this server at, used in thin webhook payloads (default http://BIND).
    #[arg(long, env = "HSDA_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Seconds a webhook target may keep failing before its subscription is disabled (default 432000 = 5 days).
    #[arg(long, env = "HSDA_DISABLE_AFTER_SECONDS")]
    pub disable_after_seconds: Option<i64>,
    /// Seconds to wait for a webhook target's answer (default 15).
    #[arg(long, env = "HSDA_DELIVERY_TIMEOUT_SECONDS")]
    pub delivery_timeout_seconds: Option<u64>,
    /// Webhook deliveries in flight at once in this process, over all subscriptions (default 512).
    #[arg(long, env = "HSDA_MAX_IN_FLIGHT")]
    pub max_in_flight: Option<usize>,
    /// Shortest digest `schedule` interval accepted, in seconds, from 1 to 60 (default 1: a subscriber may
    /// ask for digests as often as every second; raise it to keep digests from running that often).
    #[arg(long, env = "HSDA_MIN_DIGEST_SECONDS")]
    pub min_digest_seconds: Option<i64>,
    /// Milliseconds a request waits for a database lock held by another process (SQLite) or for a connection
    /// (PostgreSQL) before it fails with 503 (default 10000).
    #[arg(long, env = "HSDA_BUSY_TIMEOUT_MS")]
    pub busy_timeout_ms: Option<u64>,
    /// Base URL of another hsda whose directory this one follows: every change in its event log is applied
    /// here, in order, exactly once (repeat the flag, or separate URLs with commas, to follow several).
    #[arg(long, env = "HSDA_FOLLOW", value_delimiter = ',')]
    pub follow: Vec<String>,
    /// API key sent to followed directories that require one for reads (`Authorization: Bearer ...`).
    #[arg(long, env = "HSDA_FOLLOW_KEY", hide_env_values = true)]
    pub follow_key: Option<String>,
}

/// The file form of the settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    database_url: Option<String>,
    bind: Option<SocketAddr>,
    demo: Option<bool>,
    demo_services: Option<usize>,
    require_key_for_reads: Option<bool>,
    max_body_bytes: Option<usize>,
    allow_targets: Option<String>,
    dns_server: Option<SocketAddr>,
    retry_schedule: Option<String>,
    public_url: Option<String>,
    disable_after_seconds: Option<i64>,
    delivery_timeout_seconds: Option<u64>,
    min_digest_seconds: Option<i64>,
    max_in_flight: Option<usize>,
    busy_timeout_ms: Option<u64>,
    follow: Option<Vec<String>>,
    follow_key: Option<String>,
    // The other commands' settings (see `CommandSettings`).
    quiet: Option<bool>,
    strict_references: Option<bool>,
    format: Option<ExportFormat>,
    scope: Option<Scope>,
    tenant: Option<String>,
    services: Option<usize>,
    seed: Option<u64>,
    out: Option<PathBuf>,
}

/// What the config file says for the commands other than `serve`. Each command puts its flag first (or the
/// flag's environment twin: clap reads both), then this, then its default.
#[derive(Debug, Clone, Default)]
pub struct CommandSettings {
    /// `import`: draw no progress bar.
    pub quiet: Option<bool>,
    /// `import`: refuse references to rows that are nowhere.
    pub strict_references: Option<bool>,
    /// `export`: the format.
    pub format: Option<ExportFormat>,
    /// `keys create`: the new key's scope.
    pub scope: Option<Scope>,
    /// `keys create`: the new key's tenant; `keys list`: whose keys to show.
    pub tenant: Option<String>,
    /// `generate`: how many services.
    pub services: Option<usize>,
    /// `generate`: the seed.
    pub seed: Option<u64>,
    /// `generate`: where to write.
    pub out: Option<PathBuf>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub database_url: String,
    pub bind: SocketAddr,
    pub demo: bool,
    pub demo_services: usize,
    pub require_key_for_reads: bool,
    pub max_body_bytes: usize,
    pub allow_targets: String,
    /// Where webhook target names are resolved; `None` is the system resolver.
    pub dns_server: Option<SocketAddr>,
    pub retry_schedule: Option<String>,
    pub public_url: Option<String>,
    pub disable_after_seconds: i64,
    pub delivery_timeout_seconds: u64,
    pub max_in_flight: usize,
    pub min_digest_seconds: i64,
    pub busy_timeout_ms: u64,
    /// Base URLs of the hsda directories this one follows (see [`crate::follow`]), without a trailing `/`.
    pub follow: Vec<String>,
    /// The key sent to them, if they require one for reads.
    pub follow_key: Option<Secret>,
    /// The file's settings of the other commands.
    pub commands: CommandSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            database_url: "sqlite://hsda.db".into(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            demo: false,
            demo_services: 2000,
            require_key_for_reads: false,
            max_body_bytes: 4 * 1024 * 1024,
            allow_targets: String::new(),
            dns_server: None,
            retry_schedule: None,
            public_url: None,
            disable_after_seconds: 5 * 24 * 3600,
            delivery_timeout_seconds: 15,
            max_in_flight: 512,
            min_digest_seconds: 1,
            busy_timeout_ms: 10_000,
            follow: Vec::new(),
            follow_key: None,
            commands: CommandSettings::default(),
        }
    }
}

impl Config {
    /// The base URL of this server as clients see it.
    pub fn public_url(&self) -> String {
        self.public_url.clone().unwrap_or_else(|| format!("http://{}", self.bind)).trim_end_matches('/').to_string()
    }

    /// How the store waits for the database (a missing SQLite file is created).
    pub fn store_options(&self) -> crate::store::StoreOptions {
        crate::store::StoreOptions {
            busy_timeout: std::time::Duration::from_millis(self.busy_timeout_ms),
            create_if_missing: true,
        }
    }

    /// Resolves flags (and their environment twins) over the config file over defaults.
    pub fn load(flags: &Flags, serve: &ServeFlags) -> anyhow::Result<Config> {
        let file = match &flags.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                toml::from_str::<FileConfig>(&text).with_context(|| format!("parsing {}", path.display()))?
            }
            None => FileConfig::default(),
        };
        let d = Config::default();
        let config = Config {
            database_url: flags.database_url.clone().or(file.database_url).unwrap_or(d.database_url),
            bind: serve.bind.or(file.bind).unwrap_or(d.bind),
            demo: serve.demo.or(file.demo).unwrap_or(false),
            demo_services: serve.demo_services.or(file.demo_services).unwrap_or(d.demo_services),
            require_key_for_reads: serve.require_key_for_reads.or(file.require_key_for_reads).unwrap_or(false),
            max_body_bytes: serve.max_body_bytes.or(file.max_body_bytes).unwrap_or(d.max_body_bytes),
            allow_targets: serve.allow_targets.clone().or(file.allow_targets).unwrap_or(d.allow_targets),
            dns_server: serve.dns_server.or(file.dns_server),
            retry_schedule: serve.retry_schedule.clone().or(file.retry_schedule),
            public_url: serve.public_url.clone().or(file.public_url),
            disable_after_seconds: serve
                .disable_after_seconds
                .or(file.disable_after_seconds)
                .unwrap_or(d.disable_after_seconds),
            delivery_timeout_seconds: serve
                .delivery_timeout_seconds
                .or(file.delivery_timeout_seconds)
                .unwrap_or(d.delivery_timeout_seconds),
            max_in_flight: serve.max_in_flight.or(file.max_in_flight).unwrap_or(d.max_in_flight).clamp(1, 100_000),
            min_digest_seconds: serve.min_digest_seconds.or(file.min_digest_seconds).unwrap_or(d.min_digest_seconds),
            busy_timeout_ms: serve.busy_timeout_ms.or(file.busy_timeout_ms).unwrap_or(d.busy_timeout_ms),
            follow: match serve.follow.is_empty() {
                true => file.follow.unwrap_or_default(),
                false => serve.follow.clone(),
            }
            .iter()
            .map(|url| crate::follow::source_url(url))
            .collect::<anyhow::Result<_>>()
            .context("follow")?,
            follow_key: serve.follow_key.clone().or(file.follow_key).map(Secret),
            commands: CommandSettings {
                quiet: file.quiet,
                strict_references: file.strict_references,
                format: file.format,
                scope: file.scope,
                tenant: file.tenant,
                services: file.services,
                seed: file.seed,
                out: file.out,
            },
        };
        if let Some(tenant) = &config.commands.tenant {
            crate::cli::tenant_name(tenant).map_err(anyhow::Error::msg).context("tenant")?;
        }
        crate::webhook::ssrf::AllowList::parse(&config.allow_targets).context("allow_targets")?;
        if let Some(schedule) = &config.retry_schedule {
            crate::webhook::retry::RetrySchedule::parse(schedule).context("retry_schedule")?;
        }
        if !(1..=crate::webhook::schedule::MIN_INTERVAL_SECONDS).contains(&config.min_digest_seconds) {
            anyhow::bail!("min_digest_seconds must be from 1 to 60");
        }
        if !(100..=600_000).contains(&config.busy_timeout_ms) {
            anyhow::bail!("busy_timeout_ms must be from 100 to 600000");
        }
        if config.max_body_bytes < 1024 {
            anyhow::bail!("max_body_bytes must be at least 1024");
        }
        // (0 made every delivery a timeout after a millisecond.)
        if config.delivery_timeout_seconds == 0 {
            anyhow::bail!("delivery_timeout_seconds must be at least 1");
        }
        if let Some(url) = &config.public_url {
            let parsed = url::Url::parse(url).ok().filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host());
            if parsed.is_none() {
                anyhow::bail!("public_url must be an http(s) URL with a host, like https://directory.example.org");
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_config_file_parses_and_flags_win_over_it() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config.example.toml");
        let flags = Flags { config: Some(path), database_url: Some("sqlite://other.db".into()) };
        let config = Config::load(&flags, &ServeFlags::default()).expect("example config loads");
        assert_eq!(config.database_url, "sqlite://other.db");
        assert_eq!(config.bind, SocketAddr::from(([127, 0, 0, 1], 8080)));
        assert_eq!(config.demo_services, 2000);
    }

    #[test]
    fn a_follow_key_is_kept_out_of_debug_output() {
        let serve = ServeFlags { follow_key: Some("hsda_admin_0123456789".into()), ..Default::default() };
        let config = Config::load(&Flags::default(), &serve).unwrap();
        assert_eq!(config.follow_key.as_ref().map(Secret::expose), Some("hsda_admin_0123456789"));
        assert!(!format!("{config:?}").contains("0123456789"), "{config:?}");
    }

    #[test]
    fn settings_that_cannot_work_are_refused_at_start() {
        let flags = Flags::default();
        let load = |serve: ServeFlags| Config::load(&flags, &serve).map_err(|e| e.to_string());
        let zero = ServeFlags { delivery_timeout_seconds: Some(0), ..Default::default() };
        assert!(load(zero).unwrap_err().contains("delivery_timeout_seconds"));
        for bad in ["notaurl", "ftp://directory.example.org", "https://"] {
            let serve = ServeFlags { public_url: Some(bad.into()), ..Default::default() };
            assert!(load(serve).unwrap_err().contains("public_url"), "{bad}");
        }
        let good = ServeFlags { public_url: Some("https://directory.example.org/base".into()), ..Default::default() };
        assert_eq!(load(good).unwrap().public_url(), "https://directory.example.org/base");
        use clap::Parser;
        for tenant in ["", "  ", " acme "] {
            let parsed =
                crate::cli::Cli::try_parse_from(["hsda", "keys", "create", "--scope", "admin", "--tenant", tenant]);
            assert!(parsed.is_err(), "tenant {tenant:?}");
        }
    }

    #[test]
    fn the_file_holds_the_other_commands_settings_and_refuses_unknown_keys() {
        let dir = tempfile::tempdir().unwrap();
        let load = |text: &str| {
            let path = dir.path().join("hsda.toml");
            std::fs::write(&path, text).unwrap();
            let flags = Flags { config: Some(path), database_url: None };
            Config::load(&flags, &ServeFlags::default()).map_err(|e| format!("{e:#}"))
        };
        let every = "quiet = true\nstrict_references = true\nformat = \"ndjson\"\nscope = \"publish\"\n\
                     tenant = \"ops\"\nservices = 5\nseed = 7\nout = \"elsewhere\"\nbind = \"127.0.0.1:9999\"\n";
        let config = load(every).expect("every command's settings in one file");
        let c = &config.commands;
        assert_eq!((c.quiet, c.strict_references, c.format), (Some(true), Some(true), Some(ExportFormat::Ndjson)));
        assert_eq!((c.scope, c.tenant.as_deref()), (Some(Scope::Publish), Some("ops")));
        assert_eq!((c.services, c.seed, c.out.as_deref()), (Some(5), Some(7), Some(std::path::Path::new("elsewhere"))));
        assert_eq!(config.bind.port(), 9999, "serve's settings beside them");

        let unknown = load("quiet = true\nquite = true\n").unwrap_err();
        assert!(unknown.contains("unknown field `quite`"), "{unknown}");
        let bad = load("format = \"xml\"\n").unwrap_err();
        assert!(bad.contains("xml") && bad.contains("ndjson"), "{bad}");
        let tenant = load("tenant = \" ops \"\n").unwrap_err();
        assert!(tenant.contains("tenant") && tenant.contains("white space"), "{tenant}");
    }

    #[test]
    fn a_switch_set_in_the_file_can_be_turned_off_by_a_flag_or_its_environment_twin() {
        use clap::Parser;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hsda.toml");
        std::fs::write(&path, "require_key_for_reads = true\ndemo = true\n").unwrap();
        let serve = |args: &[&str]| {
            let cli = crate::cli::Cli::try_parse_from([&["hsda", "serve"], args].concat()).expect("parses");
            match cli.command {
                crate::cli::Command::Serve(flags) => flags,
                _ => unreachable!("serve"),
            }
        };
        let flags = Flags { config: Some(path), database_url: None };
        let load = |serve: ServeFlags| Config::load(&flags, &serve).unwrap();
        let from_file = load(serve(&[]));
        assert!(from_file.require_key_for_reads && from_file.demo);
        let off = load(serve(&["--require-key-for-reads=false", "--demo=0"]));
        assert!(!off.require_key_for_reads && !off.demo);
        let bare = serve(&["--demo", "--require-key-for-reads"]);
        assert_eq!((bare.demo, bare.require_key_for_reads), (Some(true), Some(true)), "a bare switch is true");
        assert_eq!(serve(&["--demo=yes"]).demo, Some(true));
    }
}
