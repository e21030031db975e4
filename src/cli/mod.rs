//! The `kci` command line: one file per subcommand.

mod apprise;
mod audit;
mod ca;
mod dkim;
mod doctor;
mod explain;
mod export;
mod import;
mod inbound;
mod keys;
mod migrate;
mod serve;
mod simulate;
mod staff;
mod status;
mod token;

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// kci — Keeping Customers Informed: a self-hosted customer notification hub.
///
/// Source systems post events over HTTP; kci decides who is told, where,
/// when and in what form, and delivers by mail (signed, and encrypted to
/// customers' own keys), SMS, push, chat and webhooks.
#[derive(Parser)]
#[command(name = "kci", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where the configuration comes from.
#[derive(clap::Args, Clone)]
pub struct ConfigArg {
    /// Config file (TOML). Without one, kci runs on its embedded defaults:
    /// SQLite and a Maildir outbox under ./kci-data.
    #[arg(long, short, env = "KCI_CONFIG")]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the hub: the HTTP API and the delivery workers.
    Serve(ConfigArg),
    /// Create or upgrade the database schema, then exit.
    Migrate(ConfigArg),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// A CA for the client certificates source systems present.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Tell the story of one event: every destination, every decision, why.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The event's id.
        event: String,
    },
    /// Run a scenario on a virtual clock and print every notification's fate
    /// as JSON lines.
    Simulate {
        /// The scenario: kci config plus start, until, accounts and events.
        scenario: PathBuf,
    },
    /// The operator's OpenPGP key, which signs every mail.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Read a mail to the key submission address from stdin (an MTA pipe):
    /// the key it carries is registered pending and a confirmation link
    /// sent encrypted to it. Exit 0 handled, 65 unreadable mail, 75 try
    /// again later.
    Inbound(ConfigArg),
    /// Apprise URLs to kci's channels and back, for the operator's own services.
    #[command(subcommand)]
    Apprise(AppriseCommand),
    /// Staff members: the people tokens act as.
    #[command(subcommand)]
    Staff(StaffCommand),
    /// The tamper-evident audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check the installation and say what to fix: secret files others can
    /// read, certificates expired or expiring, unusable keys, DNS records
    /// for DKIM and the Web Key Directory, providers out of reach, the
    /// database's schema and clock. Exit 1 when anything failed.
    Doctor(ConfigArg),
    /// What the hub is doing, from its database (beside a running node):
    /// the queue by state, what is due next and how late, the latest
    /// failures with the providers' words, open incidents.
    Status(ConfigArg),
    /// DKIM keys, and the DNS records that publish them.
    #[command(subcommand)]
    Dkim(DkimCommand),
    /// Load the directory in bulk from a file.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write the directory to a file that `kci import` reads.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Print a completion script for SHELL (bash, zsh, fish, elvish,
    /// powershell), such as for /usr/share/bash-completion/completions/kci.
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), such as for /usr/share/man/man1/kci.1;
    /// with --dir, write it and one page per subcommand (kci-serve.1,
    /// kci-token-create.1, …) into that directory.
    Man {
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Print the API's description (OpenAPI 3.1 JSON), as `GET
    /// /openapi.json` serves it and `openapi.json` holds it.
    Openapi,
}

#[derive(Subcommand)]
pub enum ImportCommand {
    /// Accounts, contacts and destinations from FILE: CSV with a header
    /// row or NDJSON, one row per destination (docs/import.md). Each row
    /// is checked as the API checks it; what the API protects (lowering
    /// an account's security, a new destination on a high account
    /// somebody is told on, changing a destination) is refused, never
    /// done, and nothing is removed. Refused rows are reported as `line
    /// N: reason`, then a summary; running the file again changes
    /// nothing. Exit 0 every row imported or unchanged, 1 some refused,
    /// 2 the file could not be used (missing, unknown format, bad
    /// header) or the import stopped (batches before it are written).
    Directory {
        #[command(flatten)]
        config: ConfigArg,
        /// The file, or `-` for stdin (with --format).
        file: PathBuf,
        /// The format; default: by the file's extension (.csv, or .ndjson
        /// or .jsonl).
        #[arg(long, value_enum)]
        format: Option<crate::directory::file::Format>,
        /// Write the refused rows and the summary to this file rather
        /// than stderr.
        #[arg(long)]
        report: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum ExportCommand {
    /// Every account, contact and destination, in the format `kci import
    /// directory` reads: importing it into an empty database gives the
    /// same directory. No secret is written (signing secrets, codes).
    Directory {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long, value_enum, default_value = "csv")]
        format: crate::directory::file::Format,
        /// Write to this file (created readable by its owner only) rather
        /// than stdout.
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum DkimCommand {
    /// Make a DKIM key (Ed25519, or RSA with --rsa BITS), write it to a new
    /// file (0600, never overwritten), and print its DNS record and the
    /// [email.dkim] lines to add.
    Generate {
        #[command(flatten)]
        config: ConfigArg,
        /// The selector the record is published under.
        #[arg(long)]
        selector: String,
        #[arg(long)]
        out: PathBuf,
        /// An RSA key of this many bits (2048 or more) instead of Ed25519.
        #[arg(long)]
        rsa: Option<u32>,
    },
    /// Print the DNS TXT record of every configured selector.
    Dns(ConfigArg),
}

#[derive(Subcommand)]
pub enum StaffCommand {
    /// Add a staff member with a role: viewer (the :read scopes), agent
    /// (+ directory:write, calls, incidents), approver (+ changes:approve),
    /// assurer (+ assure), admin (everything).
    Add {
        #[command(flatten)]
        config: ConfigArg,
        /// Their name, as audits and approvals record it.
        name: String,
        #[arg(long)]
        role: String,
    },
    /// List staff members: name, role, enabled or since when disabled.
    List(ConfigArg),
    /// Disable a staff member: their tokens stop working at once.
    Disable {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
    /// Print a one-time enrolment code for a staff member, to hand them
    /// in person: with it they set a password and get the TOTP secret for
    /// their authenticator (POST /v1/staff/enrol). Run again after a lost
    /// phone or a leaked password: the old ones and their sessions stop
    /// working at once.
    Enrol {
        #[command(flatten)]
        config: ConfigArg,
        name: String,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Walk the chain and its signed checkpoints (safe while kci serve
    /// runs). Exit 0 intact; 1 tampered, naming the first bad entry.
    Verify(ConfigArg),
}

#[derive(Subcommand)]
pub enum AppriseCommand {
    /// Read Apprise URLs (one a line, or an Apprise TEXT config) and print,
    /// for each, the kci destinations and the [channels.X] settings that
    /// reach the same service, or a [channels.apprise] urls line for a
    /// service kci reaches only through Apprise. Bad lines are named on
    /// stderr and do not stop the others.
    Import {
        /// The file to read, or `-` for stdin.
        source: PathBuf,
    },
    /// Print Apprise URLs for the enabled channels of a kci config
    /// (credentials included), to feed the same services to Apprise.
    Export {
        #[command(flatten)]
        config: ConfigArg,
        /// A kci destination whose address fills in a URL's target, such
        /// as telegram:12345 or mailto:noc@example.com; repeat for several.
        /// Without one, a channel's URL has a {placeholder} to replace.
        #[arg(long = "to")]
        to: Vec<String>,
    },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Generate the operator's key (Ed25519 signing, Cv25519 encryption)
    /// for the `[email] from` address, write the secret key to a new file
    /// (mode 0600, never overwritten), and print its fingerprint, the
    /// public key and the `[email] signing_key` line to add.
    Generate {
        #[command(flatten)]
        config: ConfigArg,
        /// Where to write the secret key (default kci-data/operator-secret.asc).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Protect the secret key with the passphrase in this file (its
        /// first line): the key file alone is then useless to a thief. kci
        /// reads it from [email] signing_key_passphrase_file.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
pub enum CaCommand {
    /// Make a CA in DIR: ca.key (0600), ca.crt, ca.crl, ca.json.
    Init {
        #[arg(long)]
        dir: PathBuf,
        /// Its common name.
        #[arg(long, default_value = "kci client CA")]
        name: String,
        #[arg(long, default_value_t = 3650)]
        days: i64,
    },
    /// Issue a client certificate: NAME.crt and NAME.key in DIR; its
    /// fingerprint (for `kci token create --cert`) on stdout.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The source system it is for, such as order-system.
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 365)]
        days: i64,
    },
    /// Revoke a certificate (by name, serial or fingerprint): listed in
    /// ca.crl, which kci reads again on SIGHUP.
    Revoke {
        #[arg(long)]
        dir: PathBuf,
        which: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCommand {
    /// Create a token; it is printed once, on the last line of stdout.
    Create {
        #[command(flatten)]
        config: ConfigArg,
        /// Who or what uses the token (shown in logs and audits).
        #[arg(long)]
        name: String,
        /// A scope to grant; repeat for several. One of events:write,
        /// events:read, directory:read, directory:write, directory:admin,
        /// keys:write, calls, changes:read, changes:approve, incidents,
        /// audit:read, assure, admin. With --staff, at most what their
        /// role allows (all of it when none is given).
        #[arg(long = "scope")]
        scopes: Vec<String>,
        /// The staff member the token acts as: everything it does is
        /// audited under their name.
        #[arg(long)]
        staff: Option<String>,
        /// It stops working after this long (such as 90d, 12h).
        #[arg(long)]
        expires: Option<String>,
        /// A network it may be used from (CIDR, such as 192.0.2.0/24);
        /// repeat for several. None: anywhere.
        #[arg(long = "allow")]
        allow: Vec<String>,
        /// The SHA-256 fingerprint of the client certificate it works only
        /// with (over TLS with [server] client_ca): a stolen token alone is
        /// useless.
        #[arg(long)]
        cert: Option<String>,
    },
    /// List every token: id, name, staff member, scopes, state, expiry,
    /// last use and from where (never a secret).
    List(ConfigArg),
    /// Revoke a token: it stops working at once.
    Revoke {
        #[command(flatten)]
        config: ConfigArg,
        /// Its id, as `kci token list` shows it.
        id: String,
    },
    /// Replace a token by a new one (same name, scopes, staff member and
    /// expiry); the old one stops at once. The new one is printed once.
    Rotate {
        #[command(flatten)]
        config: ConfigArg,
        id: String,
        /// Bind the new token to this client certificate instead (a
        /// renewed certificate's SHA-256 fingerprint).
        #[arg(long)]
        cert: Option<String>,
        /// The networks the new token may be used from instead; repeat
        /// for several. None given: the old token's.
        #[arg(long = "allow")]
        allow: Vec<String>,
    },
}

impl Cli {
    /// The log format to start with: `KCI_LOG_FORMAT` (`json` or `text`),
    /// else `[log] format` of the config of `serve` and `inbound` (the
    /// long-running and MTA-run commands), else text.
    pub fn log_format(&self) -> crate::config::LogFormat {
        use crate::config::LogFormat;
        match std::env::var("KCI_LOG_FORMAT").ok().as_deref() {
            Some("json") => return LogFormat::Json,
            Some("text") => return LogFormat::Text,
            _ => {}
        }
        let arg = match &self.command {
            Command::Serve(a) | Command::Inbound(a) => a,
            _ => return LogFormat::Text,
        };
        // A config that does not load is reported by the command itself.
        crate::config::Config::load(arg.config.as_deref())
            .map(|c| c.log.format)
            .unwrap_or_default()
    }
}

/// Runs the parsed command; the exit code is decided in `main`.
pub async fn run(cli: Cli) -> anyhow::Result<std::process::ExitCode> {
    match cli.command {
        Command::Serve(c) => serve::run(c).await,
        Command::Migrate(c) => migrate::run(c).await,
        Command::Token(TokenCommand::Create {
            config,
            name,
            scopes,
            staff,
            expires,
            allow,
            cert,
        }) => token::create(config, name, scopes, staff, expires, allow, cert).await,
        Command::Token(TokenCommand::List(c)) => token::list(c).await,
        Command::Ca(CaCommand::Init { dir, name, days }) => ca::init(dir, name, days),
        Command::Dkim(DkimCommand::Generate {
            config,
            selector,
            out,
            rsa,
        }) => dkim::generate(config, selector, out, rsa),
        Command::Dkim(DkimCommand::Dns(c)) => dkim::dns(c),
        Command::Import(ImportCommand::Directory {
            config,
            file,
            format,
            report,
        }) => import::directory(config, file, format, report).await,
        Command::Export(ExportCommand::Directory {
            config,
            format,
            out,
        }) => export::directory(config, format, out).await,
        Command::Doctor(c) => doctor::run(c).await,
        Command::Status(c) => status::run(c).await,
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, "kci", &mut script);
            print_all(&script)
        }
        Command::Man { dir: None } => {
            use clap::CommandFactory;
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command()).render(&mut page)?;
            print_all(&page)
        }
        Command::Man { dir: Some(dir) } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&dir)?;
            clap_mangen::generate_to(Cli::command(), &dir)?;
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Openapi => {
            print!("{}", crate::web::api::openapi::json());
            Ok(std::process::ExitCode::SUCCESS)
        }
        Command::Ca(CaCommand::Issue { dir, name, days }) => ca::issue(dir, name, days),
        Command::Ca(CaCommand::Revoke { dir, which }) => ca::revoke(dir, which),
        Command::Token(TokenCommand::Revoke { config, id }) => token::revoke(config, id).await,
        Command::Token(TokenCommand::Rotate {
            config,
            id,
            cert,
            allow,
        }) => token::rotate(config, id, cert, allow).await,
        Command::Staff(StaffCommand::Add { config, name, role }) => {
            staff::add(config, name, role).await
        }
        Command::Staff(StaffCommand::List(c)) => staff::list(c).await,
        Command::Staff(StaffCommand::Enrol { config, name }) => staff::enrol(config, name).await,
        Command::Staff(StaffCommand::Disable { config, name }) => {
            staff::disable(config, name).await
        }
        Command::Audit(AuditCommand::Verify(c)) => audit::verify(c).await,
        Command::Simulate { scenario } => simulate::run(&scenario).await,
        Command::Explain { config, event } => explain::run(config, event).await,
        Command::Keys(KeysCommand::Generate {
            config,
            out,
            passphrase_file,
        }) => keys::generate(config, out, passphrase_file),
        Command::Inbound(c) => inbound::run(c).await,
        Command::Apprise(AppriseCommand::Import { source }) => apprise::import(&source),
        Command::Apprise(AppriseCommand::Export { config, to }) => apprise::export(config, to),
    }
}

/// Writes `bytes` to stdout; a reader that went away (`kci man | head`)
/// is not an error.
fn print_all(bytes: &[u8]) -> anyhow::Result<std::process::ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(std::process::ExitCode::SUCCESS),
    }
}

/// Loads the configuration named by `arg`, or the embedded defaults.
pub fn load_config(arg: &ConfigArg) -> anyhow::Result<crate::config::Config> {
    Ok(crate::config::Config::load(arg.config.as_deref())?)
}

/// As [`load_config`], with the key codes are hashed with (`serve`,
/// `inbound`: the commands that make or check codes).
pub fn load_config_with_code_key(arg: &ConfigArg) -> anyhow::Result<crate::config::Config> {
    let file = arg
        .config
        .as_ref()
        .map_or("(embedded defaults)".to_string(), |p| {
            p.display().to_string()
        });
    Ok(load_config(arg)?.with_code_key(&file)?)
}
