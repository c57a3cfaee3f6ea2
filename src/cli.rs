//! The `hsda` command line: `serve`, `migrate`, `import`, `export`, `keys create|list|revoke` and `generate`.

use std::path::PathBuf;

use anyhow::Context;
use clap::builder::BoolishValueParser;
use clap::{Parser, Subcommand, ValueEnum};

use crate::config::{Config, Flags, ServeFlags};
use crate::store::Db;
use crate::store::keys::Scope;

#[derive(Debug, Parser)]
#[command(name = "hsda", version, about = "An HSDS 3.1 directory server that pushes every change as signed webhooks")]
pub struct Cli {
    #[command(flatten)]
    pub flags: Flags,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
// Parsed once per run: the size of the `serve` variant costs nothing worth a Box.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run the HTTP server. On a database without any live (unrevoked) API key it first creates an admin key
    /// for tenant `default` and prints it once; later starts print none (`hsda keys create` makes more).
    Serve(ServeFlags),
    /// Create or upgrade the database schema, then exit.
    Migrate,
    /// Import an HSDS tabular data package (folder or .zip), or HSDS JSON / NDJSON documents, all or nothing.
    Import {
        /// A folder or .zip with datapackage.json and CSVs, a .json file or a .ndjson file. A JSON object
        /// `{"table": "phone", "data": {...}}` (as `export --format ndjson` writes each line) is an object
        /// of that table; a bare HSDS object's table is guessed from its fields.
        path: PathBuf,
        /// Do not draw a progress bar. A switch like `serve --demo`: `--quiet` alone is true, `--quiet=false`
        /// and `HSDA_QUIET=true|false|1|0|yes|no|on|off` set it either way.
        #[arg(long, env = "HSDA_QUIET", num_args = 0..=1, require_equals = true, default_missing_value = "true",
              value_parser = BoolishValueParser::new())]
        quiet: Option<bool>,
        /// Refuse references to rows that are neither in the directory nor in the import (by default they
        /// are imported and listed as warnings). A switch like `--quiet`, with `HSDA_STRICT_REFERENCES`.
        #[arg(long, env = "HSDA_STRICT_REFERENCES", num_args = 0..=1, require_equals = true,
              default_missing_value = "true", value_parser = BoolishValueParser::new())]
        strict_references: Option<bool>,
    },
    /// Export the directory as a tabular data package (folder, or .zip if OUT ends in .zip) or as NDJSON
    /// (to standard output if OUT is `-`). Either imports back to the same directory (but a CSV cell cannot
    /// tell `""` from no value: an empty optional text comes back absent; NDJSON keeps every value).
    Export {
        /// `datapackage` (default) or `ndjson`: one `{"table": ..., "data": ...}` per line, the compiled
        /// documents (taxonomies, terms, organizations, locations, services) then each row they do not hold.
        #[arg(long, env = "HSDA_FORMAT", value_enum)]
        format: Option<ExportFormat>,
        out: PathBuf,
    },
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Write a generated, realistic directory as a tabular data package (deterministic for a seed).
    Generate {
        /// Number of services (default 1000).
        #[arg(long, env = "HSDA_SERVICES")]
        services: Option<usize>,
        /// The seed the directory is made from (default 1).
        #[arg(long, env = "HSDA_SEED")]
        seed: Option<u64>,
        /// Output folder (or .zip; default `generated`).
        #[arg(long, env = "HSDA_OUT")]
        out: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Datapackage,
    Ndjson,
}

/// A tenant is named by at least one character, without white space around it (an empty one named nobody,
/// and " acme " would be another tenant than "acme").
pub(crate) fn tenant_name(value: &str) -> Result<String, String> {
    if value.trim().is_empty() {
        return Err("a tenant name must not be empty".into());
    }
    if value.trim() != value {
        return Err("a tenant name must not start or end with white space".into());
    }
    Ok(value.to_string())
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key; the key itself is printed alone on the last line and never shown again.
    Create {
        /// What the key may do (required, here, in `HSDA_SCOPE` or in the config file).
        #[arg(long, env = "HSDA_SCOPE", value_enum)]
        scope: Option<ScopeArg>,
        /// The tenant whose key it is (default `default`).
        #[arg(long, env = "HSDA_TENANT", value_parser = tenant_name)]
        tenant: Option<String>,
    },
    /// List keys (id, tenant, scope, the secret's first characters, created, revoked), never the secrets.
    List {
        /// Only this tenant's keys.
        #[arg(long, env = "HSDA_TENANT")]
        tenant: Option<String>,
    },
    /// Revoke a key by its id (`key_...`, from `keys list`): refused at once by new processes, and by
    /// running servers within 5 seconds.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ScopeArg {
    Admin,
    Publish,
    Subscribe,
}

impl From<ScopeArg> for Scope {
    fn from(s: ScopeArg) -> Scope {
        match s {
            ScopeArg::Admin => Scope::Admin,
            ScopeArg::Publish => Scope::Publish,
            ScopeArg::Subscribe => Scope::Subscribe,
        }
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let serve_flags = match &cli.command {
        Command::Serve(s) => s.clone(),
        _ => ServeFlags::default(),
    };
    let config = Config::load(&cli.flags, &serve_flags)?;
    match cli.command {
        Command::Serve(_) => serve(config).await,
        Command::Migrate => {
            Db::connect_with(&config.database_url, config.store_options()).await?;
            println!("database at {} is up to date", config.database_url);
            Ok(())
        }
        Command::Import { path, quiet, strict_references } => {
            let db = Db::connect_with(&config.database_url, config.store_options()).await?;
            let from_file = &config.commands;
            let options = crate::bulk::import::ImportOptions {
                progress: !quiet.or(from_file.quiet).unwrap_or(false),
                strict_references: strict_references.or(from_file.strict_references).unwrap_or(false),
            };
            let report = crate::bulk::import::import_path(&db, &path, options).await?;
            println!("{report}");
            Ok(())
        }
        Command::Export { format, out } => {
            let db = existing_database(&config).await?;
            let to_stdout = out == std::path::Path::new("-");
            let report = match format.or(config.commands.format).unwrap_or(ExportFormat::Datapackage) {
                ExportFormat::Datapackage if to_stdout => {
                    anyhow::bail!("a data package is a folder or a .zip: give it a path (only ndjson goes to -)")
                }
                ExportFormat::Datapackage => crate::bulk::export::export_datapackage(&db, &out).await?,
                ExportFormat::Ndjson => crate::bulk::export::export_ndjson(&db, &out).await?,
            };
            // With the documents on standard output, the report goes to standard error.
            if to_stdout {
                eprintln!("{report}");
            } else {
                println!("{report}");
            }
            Ok(())
        }
        Command::Keys { command: KeysCommand::Create { scope, tenant } } => {
            let scope = scope.map(Scope::from).or(config.commands.scope).context(
                "a key needs a scope: --scope admin|publish|subscribe (or HSDA_SCOPE, or scope in the config file)",
            )?;
            let tenant = tenant.or_else(|| config.commands.tenant.clone()).unwrap_or_else(|| "default".into());
            let db = Db::connect_with(&config.database_url, config.store_options()).await?;
            let key = db.create_key(&tenant, scope).await?;
            println!("created {} key {} for tenant {}", key.principal.scope.as_str(), key.id, tenant);
            println!("{}", key.secret);
            Ok(())
        }
        Command::Keys { command: KeysCommand::List { tenant } } => {
            use std::io::Write;
            let db = existing_database(&config).await?;
            let tenant = tenant.or_else(|| config.commands.tenant.clone());
            let keys = db.list_keys(tenant.as_deref()).await?;
            let mut out = std::io::stdout().lock();
            let written = (|| {
                writeln!(out, "id\ttenant\tscope\tprefix\tcreated_at\trevoked_at")?;
                for key in keys {
                    let revoked = key.revoked_at.as_deref().unwrap_or("-");
                    let (id, tenant, scope, prefix, created) =
                        (key.id, key.tenant, key.scope, key.prefix, key.created_at);
                    writeln!(out, "{id}\t{tenant}\t{scope}\t{prefix}\t{created}\t{revoked}")?;
                }
                out.flush()
            })();
            match written {
                // `hsda keys list | head -1`: the reader has what it wanted.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
                other => Ok(other?),
            }
        }
        Command::Keys { command: KeysCommand::Revoke { id } } => {
            let db = existing_database(&config).await?;
            if !db.revoke_key(&id).await? {
                anyhow::bail!("no key {id} that is not revoked already (see hsda keys list)");
            }
            println!("revoked key {id}");
            Ok(())
        }
        Command::Generate { services, seed, out } => {
            let from_file = &config.commands;
            let services = services.or(from_file.services).unwrap_or(1000);
            let seed = seed.or(from_file.seed).unwrap_or(1);
            let out = out.or_else(|| from_file.out.clone()).unwrap_or_else(|| "generated".into());
            let opts = crate::generate::GenerateOptions { services, seed, ..Default::default() };
            crate::bulk::write_datapackage(&out, crate::generate::generate(&opts))
                .with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {services} services to {}", out.display());
            Ok(())
        }
    }
}

/// The database of a command that reads it (or changes rows it must already hold, as `keys revoke`): a SQLite
/// file that does not exist is refused, not created empty.
async fn existing_database(config: &Config) -> anyhow::Result<Db> {
    let options = crate::store::StoreOptions { create_if_missing: false, ..config.store_options() };
    Db::connect_with(&config.database_url, options).await
}

/// SIGINT (Ctrl-C) or SIGTERM, which service managers (systemd, Docker, Kubernetes) stop a process with: both
/// shut down gracefully (the worker gives back its leases and held retries; nothing waits for a lease to run
/// out). Without the SIGTERM handler the process died at once, as with SIGKILL.
async fn stop_requested() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
                return;
            }
            Err(e) => tracing::warn!(error = %e, "no SIGTERM handler; only Ctrl-C stops gracefully"),
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let db = Db::connect_with(&config.database_url, config.store_options()).await?;
    if config.demo {
        eprintln!(
            "loading the demo directory ({} generated services) if the directory is empty ...",
            config.demo_services
        );
        let started = std::time::Instant::now();
        crate::bulk::import::load_demo(&db, config.demo_services).await?;
        eprintln!("demo directory ready in {:.1}s", started.elapsed().as_secs_f64());
    }
    // A key made at every start piled up unrevoked admin keys, each one printed into the logs: only a database
    // that nobody can administer (no live key) gets one.
    let starter_key = db.create_key_if_none_live("default", Scope::Admin).await?;
    let app = crate::startup::Application::build_with_db(config, db).await?;
    let token = app.shutdown_token();
    tokio::spawn(async move {
        stop_requested().await;
        token.cancel();
    });
    println!("hsda listening on http://{}", app.local_addr());
    if let Some(key) = starter_key {
        println!("admin API key (shown once): {}", key.secret);
    }
    app.run().await
}

#[cfg(test)]
mod tests {
    use std::any::TypeId;

    use clap::CommandFactory;

    use super::*;

    /// The subcommands (at any depth) with their boolean arguments that have an environment twin.
    fn switches_with_twins(command: &clap::Command) -> Vec<(clap::Command, clap::Arg)> {
        let mut found = Vec::new();
        for sub in command.get_subcommands() {
            let switches = sub
                .get_arguments()
                .filter(|arg| arg.get_env().is_some() && arg.get_value_parser().type_id() == TypeId::of::<bool>());
            found.extend(switches.map(|arg| (sub.clone(), arg.clone())));
            found.extend(switches_with_twins(sub));
        }
        found
    }

    /// An environment twin goes through its flag's value parser: `HSDA_QUIET=1` was refused while `HSDA_DEMO=1`
    /// worked, so every switch with a twin must read the same words, and a bare switch must mean true.
    #[test]
    fn every_switch_with_an_environment_twin_takes_the_same_boolish_values() {
        let switches = switches_with_twins(&Cli::command());
        let names: Vec<&str> = switches.iter().filter_map(|(_, arg)| arg.get_long()).collect();
        for expected in ["demo", "require-key-for-reads", "quiet", "strict-references"] {
            assert!(names.contains(&expected), "{expected} is among {names:?}");
        }
        for (command, arg) in switches {
            let long = arg.get_long().expect("a switch has a long name");
            // Alone, so that other required arguments (import's PATH) do not get in the way.
            let alone = command.clone().mut_args(|a| a.required(false));
            let parse = |given: &str| {
                let matches = alone.clone().try_get_matches_from([command.get_name(), given]);
                let matches = matches.unwrap_or_else(|e| panic!("{} {given}: {e}", command.get_name()));
                matches.get_one::<bool>(arg.get_id().as_str()).copied()
            };
            for (value, meant) in [("1", true), ("0", false), ("yes", true), ("no", false), ("TRUE", true)] {
                assert_eq!(parse(&format!("--{long}={value}")), Some(meant), "--{long}={value}");
            }
            assert_eq!(parse(&format!("--{long}")), Some(true), "--{long} alone");
        }
    }
}
